"""The 64-bit bounds, the finite-number check and error bodies that serialise any value."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ValidationError

from tenantflow.domain.limits import (
    INT64_MAX,
    INT64_MIN,
    check_int,
    dumps_finite,
    find_non_finite,
    within,
)
from tenantflow.errors import ConfigurationError, ContractError, TenantflowError, brief


class _Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


_VALUES = {
    "inf": math.inf,
    "-inf": -math.inf,
    "nan": math.nan,
    "2**80": 2**80,
    "-2**90": -(2**90),
    "10**5000": 10**5000,
    "bytes": b"\x00\xff",
    "hostile repr": _Hostile(),
    "nested": {"deep": [math.inf, {1, 2}]},
    "long text": "x" * 10_000,
    "object": object(),
}


@pytest.mark.parametrize("value", list(_VALUES.values()), ids=list(_VALUES))
def test_error_dicts_are_json_whatever_the_field_value(value: Any) -> None:
    out = TenantflowError("bad", value=value, nested={"v": value}).to_dict()
    text = json.dumps(out, allow_nan=False)  # raises on inf/nan or an object
    assert len(text) < 1500


def test_error_dicts_keep_plain_values_and_shorten_the_rest() -> None:
    out = ConfigurationError(
        "m", a=1, b=1.5, c=None, d=["x", 2], e=INT64_MAX, f=math.inf, g=2**64, h="y" * 300
    ).to_dict()
    assert out["a"] == 1 and out["b"] == 1.5 and out["c"] is None and out["d"] == ["x", 2]
    assert out["e"] == INT64_MAX and out["f"] == "inf" and out["g"] == str(2**64)
    assert out["h"] == "y" * 200 + "…(+100 chars)"
    assert brief(10**5000) == "<an integer of about 5001 digits>"
    assert brief(_Hostile()) == "<_Hostile>"


def test_within_names_the_range() -> None:
    class M(BaseModel):
        n: Annotated[int, within(1)]

    assert M(n=INT64_MAX).n == INT64_MAX
    for bad in (0, INT64_MAX + 1):
        with pytest.raises(ValidationError) as err:
            M(n=bad)
        first = err.value.errors()[0]
        assert first["type"] == "int_range" and first["loc"] == ("n",)
        assert first["ctx"] == {"minimum": 1, "maximum": INT64_MAX}
        assert f"1..{INT64_MAX}" in first["msg"]


def test_check_int_refuses_bools_floats_and_out_of_range() -> None:
    assert check_int(INT64_MIN, "n", INT64_MIN) == INT64_MIN
    for bad in (True, 1.0, "1", INT64_MAX + 1, -1):
        with pytest.raises(ConfigurationError) as err:
            check_int(bad, "n")
        assert err.value.fields["field"] == "n" and "within 0.." in err.value.message
    with pytest.raises(ContractError):
        check_int(2**64, "n", error=ContractError)


def test_find_non_finite_names_the_path() -> None:
    assert find_non_finite({"a": [1, 2.5, {"b": "inf"}], "c": None}) is None
    assert find_non_finite(math.inf) == ("$", math.inf)
    where, value = find_non_finite({"a": [1, {"b": -math.inf}]}) or ("", None)
    assert (where, value) == ("a[1].b", -math.inf)
    assert find_non_finite({"x": {"y": (1, Decimal("NaN"))}})[0] == "x.y[1]"  # type: ignore[index]
    found = find_non_finite([0.0, math.nan])
    assert found is not None and found[0] == "[1]" and math.isnan(found[1])


def test_dumps_finite_is_strict_json_naming_the_path() -> None:
    assert dumps_finite({"a": [1, 2.5]}, "value") == '{"a":[1,2.5]}'
    assert dumps_finite(2**80, "value") == str(2**80)  # exact, not a float
    with pytest.raises(ConfigurationError) as err:
        dumps_finite({"a": {"b": math.nan}}, "value", "memory value")
    assert err.value.fields["field"] == "value.a.b"
    assert err.value.message.startswith("the memory value is not JSON: it holds nan at a.b")


def test_spec_numbers_are_range_checked_and_finite() -> None:
    import tenantflow as tf

    for kwargs in (
        {"max_attempts": 2**63},
        {"max_attempts": math.inf},
        {"max_attempts": True},
        {"multiplier": math.inf},
        {"multiplier": math.nan},
        {"jitter": math.nan},
    ):
        with pytest.raises(ConfigurationError) as err:
            tf.Retry(**kwargs)  # type: ignore[arg-type]
        assert err.value.fields["field"] == next(iter(kwargs))
    # A long retry history backs off at the cap instead of overflowing a float.
    assert tf.Retry(max_attempts=5000, multiplier=10.0, jitter=0.0).delay_s(4000, 0.5) == 30.0
    for kwargs in ({"max_iterations": 2**63}, {"max_tokens": 2**31}, {"max_tokens": math.inf}):
        with pytest.raises(ConfigurationError) as err:
            tf.Agent(**kwargs)  # type: ignore[arg-type]
        assert err.value.fields["field"] == next(iter(kwargs))


def test_endpoint_prices_and_context_fit_the_ledger() -> None:
    from tenantflow.domain.routing import Endpoint

    base: dict[str, Any] = {
        "name": "e",
        "provider": "sim",
        "model": "m",
        "region": "us-east-1",
        "tier": "small",
        "price_in_per_1k_micros": 1,
        "price_out_per_1k_micros": 1,
        "max_context": 1000,
    }
    top = Endpoint(**{**base, "max_context": 2**31 - 1, "price_out_per_1k_micros": 2**40})
    assert 0 < top.worst_case_micros(2**31 - 1, 2**31 - 1) <= INT64_MAX
    for field, value in (
        ("price_in_per_1k_micros", 2**63),
        ("price_out_per_1k_micros", 2**50),
        ("max_context", 2**31),
    ):
        with pytest.raises(ConfigurationError) as err:
            Endpoint(**{**base, field: value})
        assert err.value.fields["field"] == f"endpoint.{field}"


def test_long_lists_in_errors_are_cut_with_a_marker() -> None:
    out = ConfigurationError("m", items=list(range(120)), table={str(i): i for i in range(80)})
    data = out.to_dict()
    assert data["items"][:50] == list(range(50)) and data["items"][50] == "…(+70 items)"
    assert len(data["table"]) == 50
