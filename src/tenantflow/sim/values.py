"""Scalar values a scenario file is written in: durations, rates, money and distributions.

Each parser accepts the same spellings as a tenant policy, so a scenario reads like the policies
it configures: durations ``"45s"``, ``"15m"``, ``"2h"``, ``"30d"`` (or a number of seconds),
rates ``"50/day"``, ``"500/hour"``, ``"100/15min"``, money ``"$0.10"`` (dollars) or an integer
(micro-dollars). A value that does not parse raises :class:`ValueError`, which pydantic reports
at the field's location (and the scenario loader turns into a line number).

A :class:`Distribution` says how a random duration is drawn: fixed, log-normal (a mean and a
coefficient of variation), exponential or uniform. Step durations, compensations and reviewer
decision times are drawn from one; they are sampled, never executed.
"""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from tenantflow.domain.limits import within
from tenantflow.domain.policy import RateLimit, parse_duration, usd_to_micros
from tenantflow.errors import ConfigurationError, brief

__all__ = [
    "Distribution",
    "Money",
    "Probability",
    "RatePerSecond",
    "Sampler",
    "Seconds",
    "SpecModel",
    "to_micros",
    "to_rate_per_s",
    "to_seconds",
]


class SpecModel(BaseModel):
    """Base of every scenario model: frozen, unknown fields refused, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def to_seconds(value: Any) -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"30d"``, ``"PT4H"`` or a number of seconds, as seconds.

    Raises:
        ValueError: the value is not a duration, or is negative or not finite.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        parsed = parse_duration(value)
        if not isinstance(parsed, timedelta):
            raise ValueError(f"not a duration: {value!r}; write e.g. '45s', '15m', '2h' or '30d'")
        seconds = parsed.total_seconds()
    else:
        raise ValueError(f"not a duration: {value!r}; write e.g. '45s', '15m', '2h' or '30d'")
    if not (seconds >= 0.0 and math.isfinite(seconds)):
        raise ValueError(f"a duration must be finite and >= 0 (got {value!r})")
    return seconds


def to_rate_per_s(value: Any) -> float:
    """``"50/day"``, ``"500/hour"`` or ``"100/15min"`` as events per second.

    Raises:
        ValueError: the value is not ``<count>/<unit>`` with a positive count.
    """
    if not isinstance(value, str):
        raise ValueError(f"not a rate: {value!r}; write '<count>/<unit>' such as '50/day'")
    try:
        return RateLimit.parse(value).rate_per_s
    except ConfigurationError:
        raise ValueError(
            f"not a rate: {value!r}; write '<count>/<unit>' such as '50/day' or '500/hour'"
        ) from None


def to_micros(value: Any) -> int:
    """``"$0.10"`` (dollars) or an integer (micro-dollars) as integer micro-dollars.

    A bare float is refused: ``0.1`` could mean dollars or micro-dollars.

    Raises:
        ValueError: the value is neither, or is negative.
    """
    if isinstance(value, str) and value.strip().startswith("$"):
        try:
            micros = usd_to_micros(value)
        except ConfigurationError:
            raise ValueError(f"not a dollar amount: {brief(value)}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        micros = value
    else:
        raise ValueError(
            f"not an amount: {brief(value)}; write dollars as '$0.05' or micro-dollars as an"
            " integer"
        )
    if micros < 0:
        raise ValueError(f"an amount must be >= 0 (got {brief(value)})")
    return micros


Seconds = Annotated[float, BeforeValidator(to_seconds)]
"""A duration in seconds, written ``"45s"``, ``"2h"`` or as a number of seconds."""
RatePerSecond = Annotated[float, BeforeValidator(to_rate_per_s)]
"""A rate in events per second, written ``"50/day"``."""
Money = Annotated[int, BeforeValidator(to_micros), within(0)]
"""Integer micro-dollars, written ``"$0.05"`` or as an integer of micro-dollars."""
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Distribution(SpecModel):
    """How a duration is drawn.

    Written as a single duration (``"12s"``: always 12 s) or a mapping:

    * ``{mean: 12s}`` or ``{mean: 12s, cv: 0.5}`` — log-normal with that mean and coefficient of
      variation (standard deviation / mean; default 0.25; ``cv: 0`` is fixed);
    * ``{dist: exponential, mean: 3m}``;
    * ``{dist: uniform, low: 5s, high: 20s}``;
    * ``{dist: fixed, mean: 12s}``.

    Attributes:
        dist: The family.
        mean: The mean (fixed, log-normal, exponential).
        cv: Coefficient of variation of the log-normal.
        low: Lower bound (uniform).
        high: Upper bound (uniform).
    """

    dist: Literal["fixed", "lognormal", "exponential", "uniform"] = "lognormal"
    mean: Seconds | None = None
    cv: float = Field(default=0.25, ge=0.0, le=10.0)
    low: Seconds | None = None
    high: Seconds | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str | int | float) and not isinstance(data, bool):
            return {"dist": "fixed", "mean": data}
        return data

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.dist == "uniform":
            if self.low is None or self.high is None:
                raise ValueError("a uniform distribution needs 'low' and 'high'")
            if self.high < self.low:
                raise ValueError(f"high ({self.high} s) is below low ({self.low} s)")
            if self.mean is not None:
                raise ValueError("a uniform distribution takes 'low' and 'high', not 'mean'")
        else:
            if self.mean is None:
                raise ValueError(f"a {self.dist} distribution needs 'mean'")
            if self.low is not None or self.high is not None:
                raise ValueError("'low' and 'high' are for dist: uniform")
        return self

    @property
    def expected_s(self) -> float:
        """The mean of the distribution, in seconds."""
        if self.dist == "uniform":
            assert self.low is not None and self.high is not None
            return (self.low + self.high) / 2.0
        assert self.mean is not None
        return self.mean

    def sampler(self) -> Sampler:
        """A fast sampler for this distribution (parameters computed once)."""
        return Sampler(self)


class Sampler:
    """Draws from a :class:`Distribution` with a caller's random generator.

    The log-normal is parameterised so that its mean and coefficient of variation are the
    ones written: ``sigma² = ln(1 + cv²)``, ``mu = ln(mean) - sigma²/2``.
    """

    __slots__ = ("_a", "_b", "_kind")

    def __init__(self, dist: Distribution) -> None:
        mean = dist.mean or 0.0
        if dist.dist == "fixed" or (dist.dist == "lognormal" and (dist.cv == 0.0 or mean == 0)):
            self._kind, self._a, self._b = 0, mean, 0.0
        elif dist.dist == "lognormal":
            sigma2 = math.log1p(dist.cv * dist.cv)
            self._kind, self._a, self._b = 1, math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)
        elif dist.dist == "exponential":
            self._kind, self._a, self._b = (2, mean, 0.0) if mean > 0 else (0, 0.0, 0.0)
        else:
            assert dist.low is not None and dist.high is not None
            self._kind, self._a, self._b = 3, dist.low, dist.high

    def draw(self, rng: random.Random) -> float:
        """One value, in seconds (>= 0)."""
        kind = self._kind
        if kind == 0:
            return self._a
        if kind == 1:
            return rng.lognormvariate(self._a, self._b)
        if kind == 2:
            return rng.expovariate(1.0 / self._a)
        return rng.uniform(self._a, self._b)
