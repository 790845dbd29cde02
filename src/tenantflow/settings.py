"""Process settings: one frozen ``Settings``, built from the environment in one place.

``Settings.from_env()`` is the only code in tenantflow that reads environment variables; every
other layer receives a ``Settings`` (or plain arguments). Each field ``name`` is read from
``TENANTFLOW_<NAME>``; an explicit override (a command-line flag) wins over the environment,
and its variable is then not read at all, so a bad value there cannot get in the way::

    settings = Settings.from_env()                                  # environment or defaults
    settings = Settings.from_env(database_url="sqlite:///x.db")    # a flag wins

The API key is a secret: it is left out of ``repr``/``str`` and of every error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from tenantflow.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "Settings"]

ENV_PREFIX = "TENANTFLOW_"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S*$")
_APP = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_SERVER_URL = re.compile(r"^https?://[^\s/?#]+(/\S*)?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Settings:
    """Where tenantflow finds its store (and, later, its API).

    Args:
        database_url: the store URL, ``sqlite:///path/to/file.db`` or ``memory://``; which
            schemes are supported is decided by :func:`tenantflow.adapters.open_store`.
        app: what ``tenantflow serve`` loads: ``module:function`` references, comma-separated;
            each function is called with the engine and registers workflows, tools and models.
        url: a tenantflow server (``http://host:port``) for the command line to talk to
            instead of opening the store; None to open the store.
        api_key: the API key sent to ``url`` (never shown in ``repr``).

    Raises:
        ConfigurationError: a value is malformed (empty, contains spaces, has no scheme).
    """

    database_url: str = "sqlite:///tenantflow.db"
    app: str = ""
    url: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_url("database_url", self.database_url)
        if self.url is not None and not _SERVER_URL.match(self.url):
            raise ConfigurationError(
                f"url {self.url!r} is not a server URL: expected http(s)://host[:port],"
                " e.g. http://127.0.0.1:8000",
                field="url",
                value=self.url,
            )
        if self.api_key is not None and (
            not self.api_key or any(c.isspace() for c in self.api_key)
        ):
            # Never the value in the error: it is a secret.
            raise ConfigurationError(
                "api_key is empty or contains spaces: give the key as printed by"
                " `tenantflow keys create`",
                field="api_key",
            )
        for ref in self.apps:
            if not _APP.match(ref):
                raise ConfigurationError(
                    f"app {ref!r} is not module:function, e.g."
                    " tenantflow.examples.loan_platform.service:setup",
                    field="app",
                    value=ref,
                )

    @property
    def apps(self) -> tuple[str, ...]:
        """The ``module:function`` references in ``app``, in order."""
        return tuple(ref.strip() for ref in self.app.split(",") if ref.strip())

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable that sets field ``name`` (``TENANTFLOW_<NAME>``)."""
        return ENV_PREFIX + name.upper()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        database_url: str | None = None,
        app: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
    ) -> Settings:
        """Settings from ``TENANTFLOW_*`` environment variables, defaults for the rest.

        Args:
            environ: the environment to read (``os.environ`` when None); tests pass a dict.
            database_url: an explicit value that wins over ``TENANTFLOW_DATABASE_URL``.
            app: an explicit value that wins over ``TENANTFLOW_APP``.
            url: an explicit value that wins over ``TENANTFLOW_URL``.
            api_key: an explicit value that wins over ``TENANTFLOW_API_KEY``.

        Returns:
            The validated settings.

        Raises:
            ConfigurationError: a variable or override holds a bad value; the message names
                the variable so that it can be fixed.
        """
        env = os.environ if environ is None else environ
        overrides: dict[str, str | None] = {
            "database_url": database_url,
            "app": app,
            "url": url,
            "api_key": api_key,
        }
        values: dict[str, str] = {}
        sources: dict[str, str] = {}  # field -> the variable it was read from
        for f in fields(cls):
            override = overrides.get(f.name)
            if override is not None:
                values[f.name] = override
            elif (var := cls.env_var(f.name)) in env:
                values[f.name] = env[var]
                sources[f.name] = var
        try:
            return cls(**values)
        except ConfigurationError as exc:
            source = sources.get(str(exc.fields.get("field")))
            if source is None:
                raise
            raise ConfigurationError(
                f"environment variable {source}: {exc.message}", **{**exc.fields, "env": source}
            ) from None


def _check_url(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"{name} is empty: give a URL such as sqlite:///tenantflow.db", field=name
        )
    if not _URL.match(value):
        raise ConfigurationError(
            f"{name} {value!r} is not a URL: expected scheme:…, e.g. sqlite:///tenantflow.db",
            field=name,
            value=value,
        )
