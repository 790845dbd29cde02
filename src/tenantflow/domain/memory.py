"""Agent memory: a tenant's key-value entries and searchable documents, and the ops that write
them.

Memory belongs to one tenant and, inside it, to one **namespace**: ``default``, ``user:<id>``
or ``session:<id>`` (:func:`check_namespace`). An entry is a JSON value under a key; a document
is a text with JSON metadata, found again by keyword search. Both carry ``expires_at`` when the
tenant's policy sets ``memory_retention``: an expired row is never returned and is deleted by
:class:`PurgeMemory`.

Search is BM25 over the words of the tenant's own documents in one namespace: the statistics
it ranks by (how many documents, how long, how many contain a word) are counted inside that
partition only, so neither the results nor their order can depend on another tenant's data.
Words are Unicode letter and digit runs, case-folded (:func:`words`); no stemming.

Everything here is pure: the store applies the ops, time comes in as ``now``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from tenantflow.domain.limits import dumps_finite
from tenantflow.domain.policy import parse_duration
from tenantflow.errors import ConfigurationError

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_KEY_CHARS",
    "MAX_LIST",
    "MAX_METADATA_BYTES",
    "MAX_QUERY_CHARS",
    "MAX_QUERY_WORDS",
    "MAX_SEARCH",
    "MAX_TEXT_BYTES",
    "MAX_VALUE_BYTES",
    "NAMESPACE_KINDS",
    "AddDocument",
    "DeleteDocument",
    "DeleteMemory",
    "DocumentAdded",
    "MemoryEntry",
    "Posting",
    "PurgeMemory",
    "PutMemory",
    "SearchHit",
    "check_document_id",
    "check_key",
    "check_limit",
    "check_namespace",
    "check_text",
    "document_id_for",
    "encode_metadata",
    "encode_value",
    "expiry",
    "query_words",
    "rank",
    "retention_of",
    "term_counts",
    "words",
]

DEFAULT_NAMESPACE: Final = "default"
NAMESPACE_KINDS: Final[tuple[str, ...]] = ("user", "session")
"""Besides ``default``: ``<kind>:<id>`` namespaces, one per user or session of the tenant."""

MAX_KEY_CHARS: Final = 200
MAX_VALUE_BYTES: Final = 256 * 1024
MAX_TEXT_BYTES: Final = 256 * 1024
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_QUERY_CHARS: Final = 1000
MAX_QUERY_WORDS: Final = 32
MAX_LIST: Final = 1000
MAX_SEARCH: Final = 100
_MAX_WORD_CHARS: Final = 64  # longer runs (hashes, base64) are indexed by their first 64

_NAMESPACE_ID = r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}"
_NAMESPACE: Final = re.compile(rf"^(?:{DEFAULT_NAMESPACE}|(?:user|session):{_NAMESPACE_ID})$")
# Letters and digits of any script and a few separators: no whitespace, no control characters,
# no '/' (a key is one URL path segment).
_KEY: Final = re.compile(r"^[\w.:@=+~,\-]+$")
_WORD: Final = re.compile(r"\w+")

# BM25's usual constants: term-frequency saturation and length normalisation.
_K1: Final = 1.2
_B: Final = 0.75

_DURATION: Final[TypeAdapter[timedelta]] = TypeAdapter(timedelta)


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """A key's JSON value in a tenant's namespace; ``version`` counts the writes since the key
    was (re)created; ``expires_at`` is None when it is kept until deleted."""

    tenant_id: str
    namespace: str
    key: str
    value: Any
    version: int
    created_at: float
    updated_at: float
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A document found by a search, with its BM25 ``score`` (higher is better)."""

    tenant_id: str
    namespace: str
    id: str
    text: str
    metadata: dict[str, Any]
    score: float
    created_at: float
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class DocumentAdded:
    """What :class:`AddDocument` did: the document's id, and False when a live document with
    that id was already there (nothing was written)."""

    id: str
    created: bool


@dataclass(frozen=True, slots=True)
class Posting:
    """One word of one document, as search reads it from the store."""

    document_id: str
    word: str
    count: int
    length: int  # the document's length in words
    created_at: float


# -- ops ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class PutMemory:
    """Insert or replace an entry; an expired entry is replaced as if it were absent (version 1,
    a new ``created_at``). Result: the :class:`MemoryEntry` as stored."""

    tenant_id: str
    namespace: str
    key: str
    value_json: str
    now: float
    expires_at: float | None


@dataclass(slots=True)
class DeleteMemory:
    """Delete an entry. Result: True, or (returned, not raised) NotFoundError when the tenant
    has no live entry with that key in that namespace (an expired one is deleted all the same)."""

    tenant_id: str
    namespace: str
    key: str
    now: float


@dataclass(slots=True)
class AddDocument:
    """Insert a document and its words (``terms``: word → count, ``length``: words in all).
    Idempotent by id: with a live document of that id already there nothing is written; an
    expired one is replaced. Result: :class:`DocumentAdded`."""

    tenant_id: str
    namespace: str
    id: str
    text: str
    metadata_json: str
    terms: dict[str, int]
    length: int
    now: float
    expires_at: float | None


@dataclass(slots=True)
class DeleteDocument:
    """Delete a document and its words. Result: True, or (returned) NotFoundError when there is
    no live document with that id in that namespace."""

    tenant_id: str
    namespace: str
    id: str
    now: float


@dataclass(slots=True)
class PurgeMemory:
    """Delete the tenant's entries and documents that expired at or before ``now``; an audit
    row ``memory.purged`` records what, when anything was. Result: rows deleted by table."""

    tenant_id: str
    now: float
    actor: str = "retention"


# -- validation ---------------------------------------------------------------------------------


def check_namespace(namespace: object) -> str:
    """``namespace`` if it is ``default``, ``user:<id>`` or ``session:<id>``.

    Raises:
        ConfigurationError: anything else (``field`` is ``namespace``).
    """
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ConfigurationError(
            f"invalid memory namespace {namespace!r}: use 'default', 'user:<id>' or"
            " 'session:<id>' (the id: 1-128 letters, digits, '_', '.', '@' or '-')",
            field="namespace",
            value=repr(namespace),
        )
    return namespace


def check_key(key: object, *, field: str = "key") -> str:
    """``key`` if it is a valid entry key (or document id): 1-200 letters, digits and
    ``_ . : @ = + ~ , -``, not ``.`` or ``..``.

    Raises:
        ConfigurationError: the key is empty, too long or has another character.
    """
    if not isinstance(key, str) or not key:
        raise ConfigurationError(
            f"invalid memory {field} {key!r}: give a non-empty string", field=field
        )
    if len(key) > MAX_KEY_CHARS:
        raise ConfigurationError(
            f"invalid memory {field}: {len(key)} characters, at most {MAX_KEY_CHARS}",
            field=field,
            size=len(key),
            limit=MAX_KEY_CHARS,
        )
    if not _KEY.match(key) or key in (".", ".."):
        raise ConfigurationError(
            f"invalid memory {field} {key!r}: use letters, digits and _ . : @ = + ~ , -"
            " (no spaces or '/')",
            field=field,
            value=key,
        )
    return key


def check_document_id(document_id: object) -> str:
    """A document id: the rules of :func:`check_key`."""
    return check_key(document_id, field="document_id")


def check_limit(limit: object, most: int) -> int:
    """``limit`` if it is an int in ``1..most``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise ConfigurationError(
            f"limit must be within 1..{most}, not {limit!r}", field="limit", value=repr(limit)
        )
    return limit


def _json(value: Any, field: str) -> str:
    return dumps_finite(value, field, f"memory {field}")


def _within(text: str, field: str, most: int) -> None:
    size = len(text.encode())
    if size > most:
        raise ConfigurationError(
            f"the memory {field} is {size} bytes, at most {most} ({most // 1024} KiB)",
            field=field,
            size=size,
            limit=most,
        )


def encode_value(value: Any) -> str:
    """An entry's value as stored: compact JSON of at most :data:`MAX_VALUE_BYTES`.

    Raises:
        ConfigurationError: not JSON-serialisable (NaN and infinities included), or too big.
    """
    text = _json(value, "value")
    _within(text, "value", MAX_VALUE_BYTES)
    return text


def encode_metadata(metadata: Mapping[str, Any] | None) -> str:
    """A document's metadata as stored: a JSON object of at most :data:`MAX_METADATA_BYTES`."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise ConfigurationError(
            f"the memory metadata must be a JSON object, not {type(metadata).__name__}",
            field="metadata",
        )
    text = _json(dict(metadata), "metadata")
    _within(text, "metadata", MAX_METADATA_BYTES)
    return text


def check_text(text: object) -> str:
    """A document's text: a non-empty string of at most :data:`MAX_TEXT_BYTES`, with words."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError("the document text is empty", field="text")
    if "\x00" in text:
        raise ConfigurationError("the document text contains a NUL character", field="text")
    try:
        _within(text, "text", MAX_TEXT_BYTES)
    except UnicodeEncodeError:
        raise ConfigurationError(
            "the document text is not valid Unicode (a lone surrogate)", field="text"
        ) from None
    return text


# -- words and ranking --------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """The words of ``text`` as indexed and searched: runs of letters, digits and ``_``,
    case-folded, each cut to 64 characters."""
    return [w[:_MAX_WORD_CHARS] for w in _WORD.findall(text.casefold())]


def term_counts(text: str) -> tuple[dict[str, int], int]:
    """How often each word occurs in ``text``, and how many words it has.

    Raises:
        ConfigurationError: the text has no words at all (it could never be found).
    """
    found = words(text)
    if not found:
        raise ConfigurationError(
            "the document text has no words to index (letters or digits)", field="text"
        )
    return dict(Counter(found)), len(found)


def query_words(query: object) -> list[str]:
    """The distinct words of a search query, in order.

    Raises:
        ConfigurationError: an empty or over-long query, or one with more than
            :data:`MAX_QUERY_WORDS` distinct words.
    """
    if not isinstance(query, str) or not query.strip():
        raise ConfigurationError("the search query is empty", field="query")
    if len(query) > MAX_QUERY_CHARS:
        raise ConfigurationError(
            f"the search query is {len(query)} characters, at most {MAX_QUERY_CHARS}",
            field="query",
        )
    distinct = list(dict.fromkeys(words(query)))
    if not distinct:
        raise ConfigurationError(
            f"the search query {query!r} has no words (letters or digits)", field="query"
        )
    if len(distinct) > MAX_QUERY_WORDS:
        raise ConfigurationError(
            f"the search query has {len(distinct)} distinct words, at most {MAX_QUERY_WORDS}",
            field="query",
        )
    return distinct


def rank(
    postings: Iterable[Posting], *, documents: int, total_length: int
) -> list[tuple[str, float]]:
    """BM25 scores of the documents that contain a query word, best first (ties: newest first,
    then by id).

    Args:
        postings: every (document, query word) pair of the partition searched.
        documents: how many live documents the partition has.
        total_length: their lengths in words, summed.
    """
    found = list(postings)
    if not found or documents <= 0:
        return []
    average = max(total_length / documents, 1e-9)
    frequency = Counter(p.word for p in found)
    scores: dict[str, float] = {}
    created: dict[str, float] = {}
    for p in found:
        df = frequency[p.word]
        idf = math.log(1.0 + (documents - df + 0.5) / (df + 0.5))
        norm = p.count + _K1 * (1.0 - _B + _B * p.length / average)
        scores[p.document_id] = scores.get(p.document_id, 0.0) + idf * p.count * (_K1 + 1) / norm
        created[p.document_id] = p.created_at
    return sorted(scores.items(), key=lambda kv: (-kv[1], -created[kv[0]], kv[0]))


# -- ids and time -------------------------------------------------------------------------------


def document_id_for(*parts: str) -> str:
    """A document id derived from ``parts``: the same parts, the same id (idempotent adds)."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"doc_{digest[:24]}"


def expiry(now: float, retention: timedelta | None) -> float | None:
    """When a row written at ``now`` expires under ``retention`` (None: never)."""
    return None if retention is None else now + retention.total_seconds()


def retention_of(policy_json: str) -> timedelta | None:
    """``memory_retention`` of a stored policy (its JSON form), without validating the rest."""
    raw = json.loads(policy_json).get("memory_retention")
    if raw is None:
        return None
    try:
        return _DURATION.validate_python(parse_duration(raw))
    except ValidationError:
        raise ConfigurationError(
            f"invalid memory_retention = {raw!r} in the stored policy", field="memory_retention"
        ) from None
