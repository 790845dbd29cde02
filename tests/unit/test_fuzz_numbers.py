"""The fuzz scenario's hostile-number and command-line targets find nothing on this code, and
each of them can find something: a target that cannot fail would prove nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tenantflow.errors import ConfigurationError
from tenantflow.selftest import fuzz_numbers
from tenantflow.selftest.fuzz import _SCENARIO, Tally, _paths

pytestmark = pytest.mark.timeout(120)


def clean(tally: Tally) -> None:
    assert tally.cases > 0
    assert not tally.crashes and not tally.unclear and not tally.server_errors, (
        tally.crashes[:3],
        tally.unclear[:3],
        tally.server_errors[:3],
    )
    assert tally.accepted + tally.refused == tally.cases


def test_every_numeric_policy_field_gets_every_hostile_value() -> None:
    tally = Tally()
    fuzz_numbers.policy_numbers(tally)
    clean(tally)
    fields = {path for path, _ in fuzz_numbers._policy_overrides()}
    assert {"budget.period_micros", "budget.run_tokens", "max_running_steps", "weight"} <= fields
    assert tally.cases >= len(fields) * len(fuzz_numbers.HOSTILE)


def test_specs_and_scenarios_refuse_or_keep_hostile_numbers() -> None:
    tally = Tally()
    fuzz_numbers.spec_numbers(tally)
    clean(tally)
    base = yaml.safe_load(_SCENARIO)
    tally = Tally()
    fuzz_numbers.scenario_numbers(tally, base, _paths(base))
    clean(tally)
    assert tally.cases >= 10 * len(fuzz_numbers.HOSTILE)


def test_run_inputs_and_the_command_line(tmp_path: Path) -> None:
    tally = Tally()
    fuzz_numbers.run_inputs(tally, tmp_path)
    clean(tally)
    assert tally.refused >= 12 and tally.accepted >= 20  # non-finite refused, big ints kept
    tally = Tally()
    fuzz_numbers.cli_cases(tally, tmp_path)
    clean(tally)
    assert tally.refused == len(fuzz_numbers.BAD_URLS) + len(fuzz_numbers.BAD_CALLS)


def test_the_checks_can_fail() -> None:
    tally = Tally()
    unserialisable = ConfigurationError("x", field="f", value=object())
    unserialisable.to_dict = lambda: {"v": math.inf}  # type: ignore[method-assign]
    assert not fuzz_numbers._plain(unserialisable)
    assert not fuzz_numbers._in_range({"a": [2**63]}) and not fuzz_numbers._in_range(math.nan)
    assert fuzz_numbers._in_range({"a": [2**63 - 1, "x", None, 1.5]})

    class Bad:
        def model_dump(self, mode: str) -> dict[str, object]:
            return {"weight": math.inf}

    fuzz_numbers._stored_as_validated(tally, "bad policy", Bad())
    assert tally.crashes and "not storable" in tally.crashes[0]
    assert json.dumps(ConfigurationError("y", value=math.inf).to_dict(), allow_nan=False)
