"""Adapters: technology-specific implementations of the ports (stores, clocks, providers).

This package's top level is the composition of stores: :func:`open_store` picks the store a URL
names, so that nothing above it (the engine, the API, the CLI) imports a store class.
"""

from __future__ import annotations

from tenantflow.adapters.clock import SystemClock
from tenantflow.errors import ConfigurationError
from tenantflow.ports import Clock, Store

__all__ = ["open_store", "system_clock"]


def open_store(url: str) -> Store:
    """The store a URL names.

    * ``sqlite:///file.db``: the embedded store (one executing process);
    * ``postgresql://user@host:port/db`` (or ``postgres://``, with ``?schema=…``): the
      scale-out store; needs the ``postgres`` extra (``pip install 'tenantflow[postgres]'``);
    * ``memory://``: nothing durable, for tests and throwaway demos.

    Raises:
        ConfigurationError: an unsupported or malformed URL, or psycopg is not installed.
    """
    if url.startswith("sqlite:"):
        from tenantflow.adapters.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from tenantflow.adapters.postgres import PostgresStore
        except ImportError as exc:
            if not (exc.name or "").startswith("psycopg"):
                raise
            raise ConfigurationError(
                f"{url.split(':', 1)[0]}:// URLs need psycopg: pip install 'tenantflow[postgres]'"
                f" ({exc})",
                field="url",
            ) from None
        return PostgresStore.from_url(url)
    if url.startswith("memory:"):
        from tenantflow.adapters.memory import MemoryStore

        return MemoryStore()
    raise ConfigurationError(
        f"unsupported store URL {url!r}: use sqlite:///path/to/file.db,"
        " postgresql://user@host:port/dbname or memory://",
        field="url",
        value=url,
    )


def system_clock() -> Clock:
    """The wall clock, the engine's time source unless a test gives it a fake one."""
    return SystemClock()
