"""Data contracts: pydantic validation at every step boundary.

A :class:`Contract` wraps one type (a pydantic model, ``list[Model]``, ``int``…). Checking a value
validates it and returns the validated copy together with its canonical JSON, so what reaches a
downstream step and what is stored are the same validated data. A violation raises
:class:`~tenantflow.errors.ContractError` naming the step, the field path and the offending value.

A value holding an infinity or NaN is refused too, wherever it hides (``1e309`` in a JSON body is
one): JSON cannot carry it, so it would be stored as ``null`` and break the contract on reading.
Integers are kept exactly, however large (the JSON text is stored, not a 64-bit column).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pydantic
from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticSerializationError

from tenantflow.domain.limits import find_non_finite
from tenantflow.errors import ContractError, brief

__all__ = ["Contract", "contract_for"]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "$"


class Contract:
    """Validation and serialisation for one type."""

    __slots__ = ("_adapter", "_is_model", "annotation", "is_any")

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.is_any = annotation is Any
        self._adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        self._is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)

    def check(self, value: Any, *, step: str, direction: str) -> tuple[Any, bytes]:
        """Validate ``value``; returns ``(validated, json_bytes)`` or raises ContractError."""
        try:
            if self._is_model and isinstance(value, BaseModel):
                # Instances may have been built with model_construct or mutated after
                # validation: re-validate from their data rather than trusting them.
                value = value.model_dump(mode="python")
            validated = self._adapter.validate_python(value)
            data = self._adapter.dump_json(validated)
        except pydantic.ValidationError as exc:
            raise self._error(exc, step, direction, value) from None
        except (TypeError, ValueError, PydanticSerializationError) as exc:
            raise ContractError(
                f"{direction} of step {step!r} is not serialisable: {exc}",
                step=step,
                direction=direction,
                field="$",
                value=_short(value),
            ) from None
        if b"null" in data or b"Infinity" in data or b"NaN" in data:  # how inf/NaN are written
            self._refuse_non_finite(validated, step, direction)
        return validated, data

    def _refuse_non_finite(self, validated: Any, step: str, direction: str) -> None:
        found = find_non_finite(self._adapter.dump_python(validated))
        if found is None:
            return
        field, number = found
        subject = "the workflow input" if step == "<input>" else f"{direction} of step {step!r}"
        raise ContractError(
            f"{subject} breaks its contract at {field}: numbers must be finite (got {number!r})",
            step=step,
            direction=direction,
            field=field,
            value=repr(number),
        )

    def load(self, data: bytes | str, *, step: str, direction: str = "stored output") -> Any:
        """Rebuild a value from its stored JSON (after a restart)."""
        try:
            return self._adapter.validate_json(data)
        except pydantic.ValidationError as exc:
            raise self._error(exc, step, direction, data) from None

    def dump(self, value: Any) -> bytes:
        return self._adapter.dump_json(value)

    def _error(
        self, exc: pydantic.ValidationError, step: str, direction: str, value: Any
    ) -> ContractError:
        first = exc.errors()[0]
        field = _loc(tuple(first.get("loc", ())))
        bad = first.get("input", value)
        subject = "the workflow input" if step == "<input>" else f"{direction} of step {step!r}"
        return ContractError(
            f"{subject} breaks its contract at {field}: {first.get('msg')} (got {_short(bad)})",
            step=step,
            direction=direction,
            field=field,
            value=_short(bad),
            errors=len(exc.errors()),
        )


def _short(value: Any, limit: int = 200) -> str:
    return brief(value, limit)


@lru_cache(maxsize=4096)
def _cached(annotation: Any) -> Contract:
    return Contract(annotation)


def contract_for(annotation: Any) -> Contract:
    """A (cached, when hashable) contract for ``annotation``."""
    try:
        return _cached(annotation)
    except TypeError:  # unhashable annotation
        return Contract(annotation)
