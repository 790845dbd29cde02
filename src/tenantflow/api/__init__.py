"""The REST API: :func:`create_app` builds a FastAPI app around an engine.

HTTP lives here and only here: status codes, headers, API keys, request and response bodies.
Every operation calls the engine with the tenant of the caller's key. Needs the ``server``
extra (``pip install 'tenantflow[server]'``); ``tenantflow serve`` runs it with uvicorn.
"""

from tenantflow.api.app import create_app

__all__ = ["create_app"]
