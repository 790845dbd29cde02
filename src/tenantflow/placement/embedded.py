"""The embedded placement: one process records, executes and serves every tenant's runs.

This is ``Engine.open(url)`` in a library, and ``tenantflow serve`` (without ``--workers
external``) behind the REST API: a SQLite file or a PostgreSQL database, and no other process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantflow.engine.config import EngineConfig
from tenantflow.engine.engine import Engine
from tenantflow.errors import ConfigurationError
from tenantflow.ports import Clock

__all__ = ["open_embedded"]


def open_embedded(
    url: str,
    config: EngineConfig | None = None,
    *,
    regions: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    **options: Any,
) -> Engine:
    """An engine that executes every tenant's runs in this process.

    Args:
        url: the store's URL (``sqlite:///file.db``, ``postgresql://…``, ``memory://``).
        config: the settings; ``options`` (fields of :class:`EngineConfig`) change them.
        regions: one store URL per residency region.
        clock: the time source (the wall clock when None).

    Raises:
        ConfigurationError: a bad URL or setting, or a ``cluster`` role (that is
            :mod:`tenantflow.placement.centralized`).
    """
    settings = (config or EngineConfig()).with_options(**options)
    if settings.cluster is not None:
        raise ConfigurationError(
            "an embedded engine has no cluster role; see tenantflow.placement.centralized",
            field="cluster",
        )
    return Engine.open(url, settings, regions=regions, clock=clock)
