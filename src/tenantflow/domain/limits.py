"""Bounds on the numbers that reach the store, checked where they enter.

Every integer a policy, a workflow spec, a scenario or an API request carries into the store is
held in a 64-bit column (SQLite ``INTEGER``, PostgreSQL ``BIGINT``: :data:`INT64_MIN` ..
:data:`INT64_MAX`); one past it would be accepted by Python and fail later, at the first write,
with the tenant's runs. So every such field is checked on the way in, by pydantic
(:func:`within`, in a model's annotation) or by hand (:func:`check_int`), and a refusal names the
field and the allowed range.

Floats must be finite: an infinity or NaN cannot be written as JSON (it would be stored as
``null``), so :func:`find_non_finite` names where one hides inside a JSON-like value (a run's
input, a memory entry) and :func:`dumps_finite` is the one strict JSON encoder for such values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from tenantflow.errors import ConfigurationError, brief

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_TOKENS",
    "check_int",
    "dumps_finite",
    "find_non_finite",
    "within",
]

INT64_MIN: Final[int] = -(2**63)
INT64_MAX: Final[int] = 2**63 - 1
MAX_TOKENS: Final[int] = 2**31 - 1
"""The most tokens one model call may ask for: a reservation (prompt + ``max_tokens``, times a
price) then always fits the ledger's 64-bit columns."""


def within(minimum: int = 0, maximum: int = INT64_MAX) -> AfterValidator:
    """A pydantic validator refusing an int outside ``minimum..maximum`` (64-bit by default).

    Use it in an annotation: ``Annotated[int, within(1)]``. The error's context carries
    ``minimum`` and ``maximum``, and its message names the range.
    """

    def check(value: int) -> int:
        if not minimum <= value <= maximum:
            raise PydanticCustomError(
                "int_range",
                "must be an integer within {minimum}..{maximum}",
                {"minimum": minimum, "maximum": maximum},
            )
        return value

    return AfterValidator(check)


def check_int(
    value: Any,
    field: str,
    minimum: int = 0,
    maximum: int = INT64_MAX,
    error: Callable[..., Exception] = ConfigurationError,
) -> int:
    """``value`` if it is an int (not a bool) within ``minimum..maximum``.

    Raises:
        ConfigurationError: (or ``error``) naming ``field``, the value (shortened) and the range.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise error(
            f"invalid {field} = {brief(value)}: must be an integer within {minimum}..{maximum}",
            field=field,
            value=value,
            minimum=minimum,
            maximum=maximum,
        )
    return value


def _where(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "$"


def find_non_finite(value: Any, *, limit: int = 100_000) -> tuple[str, Any] | None:
    """The path (``amount``, ``items[2].price``, ``$`` for the value itself) and the value of the
    first infinity or NaN inside ``value`` (floats and Decimals, inside dicts, lists and tuples),
    or None. At most ``limit`` nodes are visited (deeper input is refused elsewhere)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    seen = 0
    while stack and seen < limit:
        path, node = stack.pop()
        seen += 1
        if isinstance(node, float):
            if not math.isfinite(node):
                return _where(path), node
        elif isinstance(node, Decimal):
            if not node.is_finite():
                return _where(path), node
        elif isinstance(node, Mapping):
            items = list(node.items())
            stack.extend(((*path, str(k)), v) for k, v in reversed(items))
        elif isinstance(node, list | tuple):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(node))))
    return None


def dumps_finite(value: Any, field: str, what: str = "") -> str:
    """Compact JSON of ``value``, refusing what is not plain JSON (NaN and infinities included).

    Args:
        value: The value.
        field: Its name in errors (a non-finite number's path inside it is appended).
        what: How messages call it (``"memory value"``); ``field`` by default.

    Raises:
        ConfigurationError: naming ``field`` (and the path of a non-finite number inside it).
    """
    what = what or field
    found = find_non_finite(value)
    if found is not None:
        where, number = found
        path = field if where == "$" else f"{field}.{where}"
        raise ConfigurationError(
            f"the {what} is not JSON: it holds {number!r} at {where} (numbers must be finite)",
            field=path,
            value=repr(number),
        )
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        text.encode()
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise ConfigurationError(
            f"the {what} is not JSON: {brief(str(exc))}", field=field, value=type(value).__name__
        ) from None
    return text
