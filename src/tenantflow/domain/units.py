"""Units written in policies and scenarios: dollars as integer micro-dollars, durations.

Money is integer micro-dollars (``1 USD == 1_000_000``) everywhere; floats never enter a ledger.
An amount must fit the store's 64-bit columns (see :mod:`tenantflow.domain.limits`). Durations
may be written ``"4h"``, ``"30d"``, ``"7 years"``; anything else is left for pydantic to parse
(a number of seconds, ISO 8601).
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Final

from tenantflow.domain.limits import INT64_MAX
from tenantflow.errors import ConfigurationError, brief

__all__ = ["MICROS_PER_USD", "UNIT_SECONDS", "micros_to_usd", "parse_duration", "usd_to_micros"]

MICROS_PER_USD: Final[int] = 1_000_000

UNIT_SECONDS: Final[dict[str, float]] = {  # unit name -> seconds
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400.0),
    # A year counts as 366 days so a retention period never ends before its calendar date.
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), 366 * 86400.0),
}
_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def usd_to_micros(usd: Decimal | int | float | str) -> int:
    """Convert dollars to integer micro-dollars, rounding half-even at the micro.

    Args:
        usd: An amount in dollars; strings may carry a leading ``$`` (``"$2.00"``).

    Returns:
        The amount in micro-dollars.

    Raises:
        ConfigurationError: ``usd`` is not a finite number, or its micro-dollars do not fit the
            store's 64-bit integers.
    """
    if isinstance(usd, bool):
        raise ConfigurationError(f"not a dollar amount: {brief(usd)}", field="usd", value=usd)
    # str() first so a float like 0.1 converts as written, not as its binary expansion.
    text = str(usd).strip().removeprefix("$")
    try:
        amount = Decimal(text)
        if amount.is_finite():
            micros = int((amount * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
            if abs(micros) <= INT64_MAX:
                return micros
    except InvalidOperation:  # not a number, or too many digits to be an amount
        pass
    raise ConfigurationError(
        f"not a dollar amount: {brief(usd)} (at most ${micros_to_usd(INT64_MAX)} either way)",
        field="usd",
        value=usd,
    )


def micros_to_usd(micros: int) -> Decimal:
    """Convert integer micro-dollars to an exact :class:`~decimal.Decimal` dollar amount."""
    return Decimal(micros).scaleb(-6)


def parse_duration(value: object) -> object:
    """Turn ``"90s"``, ``"15m"``, ``"4h"``, ``"30d"``, ``"7 years"`` into a timedelta.

    Anything else is returned unchanged for pydantic to parse (a timedelta, a number of seconds,
    or an ISO 8601 duration such as ``"PT4H"``).
    """
    if isinstance(value, str) and (match := _DURATION_RE.match(value)):
        unit = UNIT_SECONDS.get(match.group(2).lower())
        if unit is not None:
            try:
                return timedelta(seconds=float(match.group(1)) * unit)
            except OverflowError:  # a ValueError is reported by pydantic, naming the field
                raise ValueError(f"{brief(value)} is longer than a duration can be") from None
    return value
