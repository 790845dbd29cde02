"""Credential-shaped strings in tenant data: found, named by where they are, never repeated.

A run's input is stored in its state, shown by every read of the run and passed to models and
tools: a secret put there leaks to all of them. So submissions are checked for strings shaped
like well-known credentials — tenantflow API keys (``tfk_…``), provider secret keys (``sk-…``),
AWS access key ids (``AKIA…``/``ASIA…``), PEM private key blocks, GitHub and Slack tokens — and
refused when one is found. The finding names the field path (``input.auth.token``) and the kind
of credential, never the value, so that the refusal itself (the error, its audit row, logs) does
not repeat the secret.

The patterns are shapes, not proof: a refusal can be a false positive (a test string shaped like
a key); the remedy is the same — keep credentials out of inputs and give tools their secrets
from the platform's configuration.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "Finding", "find_credential", "find_credential_json"]

KINDS: dict[str, str] = {
    "tenantflow_api_key": r"\btfk_[0-9a-f]{24}_[A-Za-z0-9_-]{32,128}",
    "secret_key": r"\bsk-(?:[A-Za-z0-9]+-)?[A-Za-z0-9_-]{20,}",
    "aws_access_key_id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "private_key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    "slack_token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
}
"""Each kind of credential and the shape that identifies it."""

_ANY = re.compile("|".join(f"(?:{p})" for p in KINDS.values()))
_EACH = {kind: re.compile(p) for kind, p in KINDS.items()}


@dataclass(frozen=True, slots=True)
class Finding:
    """Where a credential-shaped string is and what it looks like.

    ``path`` is relative to the value checked, as contract errors name fields: ``auth.token``,
    ``items[2]``, ``[0].key``, ``$`` for the value itself; ``<key>`` marks a mapping key.
    """

    path: str
    kind: str

    def where(self, root: str = "input") -> str:
        """The path under ``root``: ``input.auth.token``, ``input[0]``, ``input``."""
        if self.path == "$":
            return root
        return root + (self.path if self.path.startswith("[") else f".{self.path}")


def _kind(text: str) -> str | None:
    if _ANY.search(text) is None:
        return None
    return next(kind for kind, pattern in _EACH.items() if pattern.search(text))


def _join(path: str, key: str) -> str:
    return key if path == "$" else f"{path}.{key}"


def find_credential(value: Any, path: str = "$") -> Finding | None:
    """The first credential-shaped string in ``value`` (JSON-like: dicts, lists, strings), in
    a mapping key or a value, or None."""
    if isinstance(value, str):
        kind = _kind(value)
        return None if kind is None else Finding(path, kind)
    if isinstance(value, dict):
        for key, item in value.items():
            kind = _kind(str(key))
            if kind is not None:
                return Finding(_join(path, "<key>"), kind)
            found = find_credential(item, _join(path, str(key)))
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = find_credential(item, f"{'' if path == '$' else path}[{i}]")
            if found is not None:
                return found
    return None


def find_credential_json(data: bytes) -> Finding | None:
    """:func:`find_credential` over a JSON document; one pattern scan when there is none."""
    text = data.decode("utf-8", errors="replace")
    if _ANY.search(text) is None:
        return None
    return find_credential(json.loads(text)) or Finding("$", _kind(text) or "unknown")
