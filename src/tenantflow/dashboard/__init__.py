"""The web dashboard served at ``/ui``: server-rendered pages for a tenant's runs, reviews,
usage and audit log, and for the control plane (tenants, keys, fairness), signed in with an
API key and scoped exactly like the REST API. Templates and static files ship in the package.
"""

from tenantflow.dashboard.app import create_dashboard
from tenantflow.dashboard.sessions import SessionStore

__all__ = ["SessionStore", "create_dashboard"]
