"""Fuzz: hostile and malformed input everywhere the platform takes it.

* **The API** — schemathesis generates requests for every operation of the app's own OpenAPI
  document, valid and invalid, with a tenant's and an admin's key, on generated ids and on real
  ones. No answer may be a server error (5xx); every refusal (4xx) must be the one error shape,
  ``{"error": {"code", "message"}}`` with a message; every answer must match the document.
* **Workflow specs** — hypothesis builds workflows from random step graphs through the public
  authoring API: names good and bad, dependencies on steps that exist, do not, or close a cycle,
  retry and timeout settings in and out of range. Building either succeeds or raises a typed
  error (:class:`~tenantflow.errors.SpecError`, :class:`~tenantflow.errors.ConfigurationError`);
  a workflow that builds then runs on a real engine and ends (completed, or failed with its error
  recorded) — it never hangs or crashes the engine.
* **Policies** — random overrides of every policy field with values of every type; a policy is
  built or refused with a :class:`~tenantflow.errors.ConfigurationError` naming the field.
* **Scenario files** — a valid scenario, mutated (fields removed, retyped, given junk; the YAML
  text cut or corrupted), parsed: it loads, or the refusal is one line naming the file.
* **Hostile numbers and command lines**, case by case (:mod:`tenantflow.selftest.fuzz_numbers`):
  integers past 2**63 and non-finite floats in every numeric field of policies, specs, scenarios
  and run inputs (library and REST API), and malformed URLs and flags for the command line.

A *crash* is any other exception; an *unclear refusal* a typed error without a message, field
or location.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import yaml

import tenantflow as tf
from tenantflow.errors import TenantflowError
from tenantflow.selftest import fuzz_numbers
from tenantflow.selftest.core import Context, Row, Unavailable

__all__ = ["Tally", "run_fuzz"]


@dataclass
class Tally:
    """What one fuzz target saw."""

    cases: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: list[str] = field(default_factory=list)
    unclear: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    def crash(self, what: str, exc: BaseException) -> None:
        self.crashes.append(f"{what}: {type(exc).__name__}: {str(exc)[:160]}")

    def attempt(
        self, what: str, call: Callable[[], Any], clear: Callable[[TenantflowError], bool]
    ) -> bool:
        """One case: ``call`` is accepted (True), refused with a typed error (``clear`` says
        whether it is a clear one), or crashes."""
        self.cases += 1
        try:
            call()
        except TenantflowError as exc:
            self.refused += 1
            if not (exc.message.strip() and clear(exc)):
                self.unclear.append(f"{exc.message[:160]!r} for {what}")
            return False
        except Exception as exc:
            self.crash(what, exc)
            return False
        self.accepted += 1
        return True


def run_fuzz(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring)."""
    try:
        import hypothesis  # noqa: F401
        import schemathesis  # noqa: F401
    except ImportError as exc:
        raise Unavailable(
            f"the dev extra is needed: pip install 'tenantflow[dev]' ({exc})"
        ) from None
    n = ctx.profile.fuzz_cases
    tallies = {
        "API": _api(ctx, directory),
        "workflow specs": _specs(n, directory),
        "policies": _policies(n),
        "scenario files": _scenarios(n),
        **_hostile(directory),
    }
    for name, t in tallies.items():
        row.fault("fuzz cases", t.cases)
        row.check(
            not t.server_errors,
            f"{name}: {len(t.server_errors)} server errors, e.g. {t.server_errors[:2]}",
        )
        row.check(not t.crashes, f"{name}: {len(t.crashes)} crashes, e.g. {t.crashes[:2]}")
        row.check(not t.unclear, f"{name}: {len(t.unclear)} unclear refusals, e.g. {t.unclear[:2]}")
        row.figures[f"{name} cases"] = t.cases
        row.note(
            f"{name}: {t.cases} cases, {t.accepted} accepted, {t.refused} refused,"
            f" {len(t.server_errors)} 5xx, {len(t.crashes)} crashes"
        )


def _hostile(directory: Path) -> dict[str, Tally]:
    """The case-by-case targets of :mod:`~tenantflow.selftest.fuzz_numbers`."""
    tallies = {name: Tally() for name in ("policy numbers", "spec numbers", "scenario numbers")}
    fuzz_numbers.policy_numbers(tallies["policy numbers"])
    fuzz_numbers.spec_numbers(tallies["spec numbers"])
    base = yaml.safe_load(_SCENARIO)
    fuzz_numbers.scenario_numbers(tallies["scenario numbers"], base, _paths(base))
    tallies["run inputs"] = Tally()
    fuzz_numbers.run_inputs(tallies["run inputs"], directory)
    tallies["command line"] = Tally()
    fuzz_numbers.cli_cases(tallies["command line"], directory)
    return tallies


# -- the API -----------------------------------------------------------------------------------


def _api(ctx: Context, directory: Path) -> Tally:
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.python import asgi
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from tenantflow.api import create_app
    from tenantflow.selftest.isolation import approval_workflow

    url = f"sqlite:///{directory / 'fuzz.db'}?synchronous=normal"
    real, tenant_key, admin_key = asyncio.run(_prepare(url, approval_workflow))
    engine = tf.Engine.open(url, seed=ctx.seed)
    app = create_app(
        engine, setup=[lambda e: e.register(approval_workflow())], max_body_bytes=65_536
    )
    tally = Tally()
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    try:
        loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in loaded.get_all_operations():
            operation = cast(Any, result).ok()
            names = {p.name for p in operation.path_parameters}
            ids = {k: v for k, v in real.items() if k in names} or None
            for key in (tenant_key, admin_key):
                for path_parameters in [None, ids] if ids else [None]:
                    strategy = st.one_of(
                        [
                            operation.as_strategy(mode, path_parameters=path_parameters)
                            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                        ]
                    )
                    examples = ctx.profile.fuzz_examples * 2
                    _fuzz_operation(strategy, key, examples, tally, checks)
    finally:
        asgi.shutdown_lifespans()
    return tally


def _hypothesis(n: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Settings for ``n`` examples: reproducible, no deadline, no example database."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


def _fuzz_operation(strategy: Any, key: str, n: int, tally: Tally, checks: list[Any]) -> None:
    from hypothesis import given

    @_hypothesis(n)
    @given(case=strategy)
    def one(case: Any) -> None:
        _call(case, key, tally, checks)

    one()


def _call(case: Any, key: str, tally: Tally, checks: list[Any]) -> None:
    tally.cases += 1
    where = f"{case.method} {case.formatted_path}"
    try:
        response = case.call(headers={"Authorization": f"Bearer {key}"})
    except Exception as exc:  # the app raised out of its handlers
        tally.crash(where, exc)
        return
    status = response.status_code
    if status >= 500:
        tally.server_errors.append(f"{where}: {status} {response.text[:120]}")
        return
    if status < 400:
        tally.accepted += 1
    else:
        tally.refused += 1
        try:
            error = response.json()["error"]
            clear = bool(error["code"]) and bool(error["message"])
        except (ValueError, KeyError, TypeError):
            clear = False
        if not clear and "text/event-stream" not in response.headers.get("content-type", [""])[0]:
            tally.unclear.append(f"{where}: {status} {response.text[:120]}")
    try:
        case.validate_response(response, checks=checks)
    except Exception as exc:  # a check failed: the answer does not match the document
        tally.unclear.append(f"{where}: {status} does not match the document: {str(exc)[:160]}")


async def _prepare(
    url: str, workflow: Callable[[], tf.Workflow]
) -> tuple[dict[str, str], str, str]:
    """A database with an admin key, the fuzzed tenant (a finished run, a run whose review was
    opened) and a victim tenant the admin operations may change or delete."""
    async with tf.Engine.open(url, seed=1) as engine:
        engine.register(workflow())
        await engine.tenants.create("fuzz", tier="standard")
        await engine.tenants.create("victim", tier="free")
        _, admin = await engine.keys.create(None, name="admin")
        _, tenant = await engine.keys.create("fuzz", name="fuzz")
        victim_key, _ = await engine.keys.create("victim", name="victim")
        done = await engine.submit("approval", tenant="fuzz", input={"applicant": "f", "amount": 1})
        await done.result()
        waiting = await engine.submit(
            "approval", tenant="fuzz", input={"applicant": "f", "amount": 5000}
        )
        opened = asyncio.Event()
        engine.reviews.subscribe(lambda review: opened.set())
        await asyncio.wait_for(opened.wait(), 10)
        review = (await engine.reviews.list("fuzz"))[0]
        await engine.cancel("fuzz", waiting.id)  # no event stream waits on it
    ids = {
        "run_id": done.id,
        "review_id": review.id,
        "tenant_id": "victim",
        "key_id": victim_key.id,
    }
    return ids, tenant, admin


# -- workflow specs ----------------------------------------------------------------------------


def _step_fn(params: list[str]) -> Any:
    """A step function whose parameters are ``params`` (ints; it returns their sum + 1)."""

    async def body(ctx: tf.StepContext, **kwargs: Any) -> int:
        return sum(v for v in kwargs.values() if isinstance(v, int)) + 1

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    others = [
        inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, annotation=int)
        for p in dict.fromkeys(params)
        if p.isidentifier() and p != "ctx"
    ]
    body.__signature__ = inspect.Signature([ctx_param, *others])  # type: ignore[attr-defined]
    body.__annotations__ = {p.name: int for p in others} | {"return": int}
    return body


def _specs(n: int, directory: Path) -> Tally:
    from hypothesis import given
    from hypothesis import strategies as st

    tally = Tally()
    # Mostly names that can work, and now and then one that cannot.
    names = st.sampled_from([*"abcde" * 4, "input", "", "two words", "ctx", "x" * 70, "a.b"])
    step = st.fixed_dictionaries(
        {
            "name": names,
            "params": st.lists(names, max_size=3),
            "after": st.lists(names, max_size=2),
            "optional": st.booleans(),
            "attempts": st.sampled_from([1, 1, 2, 3, 0, -1, 2**63, 2**80, math.inf, math.nan]),
            "timeout_s": st.one_of(st.none(), st.none(), st.floats(-1.0, 5.0)),
            "fails": st.booleans(),
        }
    )
    built: list[tf.Workflow] = []

    @_hypothesis(n)
    @given(steps=st.lists(step, min_size=0, max_size=6))
    def one(steps: list[dict[str, Any]]) -> None:
        wf = tf.Workflow(f"fuzz-{tally.cases}", input=int)

        def build() -> None:
            for s in steps:
                timeout = None if s["timeout_s"] is None else timedelta(seconds=s["timeout_s"])
                wf.step(
                    _step_fn(s["params"]),
                    name=s["name"],
                    after=s["after"],
                    optional=s["optional"],
                    retry=tf.Retry(max_attempts=s["attempts"], initial=timedelta(0)),
                    timeout=timeout,
                )
            wf.spec  # noqa: B018 - building validates

        if tally.attempt(f"building {steps}", build, lambda exc: True):
            built.append(wf)

    one()
    asyncio.run(_run_built(built, tally, directory))
    return tally


async def _run_built(built: list[tf.Workflow], tally: Tally, directory: Path) -> None:
    """Every workflow that built runs once and ends, completed or failed with its error."""
    url = f"sqlite:///{directory / 'specs.db'}?synchronous=normal"
    async with tf.Engine.open(url, seed=1, auto_tenant="enterprise") as engine:
        for wf in built:
            try:
                engine.register(wf)
                handle = await engine.submit(wf.name, tenant="fuzz", input=1)
                record = await handle.wait(timedelta(seconds=10))
            except TenantflowError as exc:
                tally.refused += 1
                if not exc.message.strip():
                    tally.unclear.append(f"running {wf.name}: {type(exc).__name__}")
                continue
            except Exception as exc:
                tally.crash(f"running {wf.name}", exc)
                continue
            if record.status != tf.RunStatus.COMPLETED and not (record.error or "").strip():
                tally.unclear.append(f"{wf.name} ended {record.status.value} without an error")


# -- policies ----------------------------------------------------------------------------------


def _policies(n: int) -> Tally:
    from hypothesis import given
    from hypothesis import strategies as st

    from tenantflow.domain.policy import Policy

    tally = Tally()
    fields = sorted(Policy.model_fields)
    junk = st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**40), 2**40),
            st.integers(-(2**80), 2**80),  # past the store's 64-bit columns too
            st.sampled_from(fuzz_numbers.HOSTILE),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=12),
            st.sampled_from(["PT30S", "P1D", "-PT1S", "500/hour", "0/second", "us-east-1", "$0.5"]),
        ),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=6,
    )
    overrides = st.dictionaries(st.sampled_from([*fields, "no_such_field"]), junk, max_size=4)

    @_hypothesis(n)
    @given(tier=st.sampled_from(["enterprise", "standard", "free", "platinum"]), data=overrides)
    def one(tier: str, data: dict[str, Any]) -> None:
        tally.attempt(
            f"{tier} {data}",
            lambda: Policy.for_tier(tier, **data),
            lambda exc: (
                bool(exc.fields.get("field")) or any(k in exc.message for k in [*data, tier])
            ),
        )

    one()
    return tally


# -- scenario files ----------------------------------------------------------------------------

_SCENARIO = """\
name: fuzz
seed: 3
slots: 4
duration: 30m
endpoints:
  - {name: us-small, model: gpt-small, region: us-east-1, tier: small,
     price_in_per_1k: 150, price_out_per_1k: 600, latency: 0.6s}
reviewer_pools:
  - {name: shared, reviewers: 1, decision_time: {mean: 2m, cv: 0.5}}
workflow:
  name: loan
  steps:
    - name: verify
      duration: {mean: 7s, cv: 0.3}
      tool: identity_check
      tool_cost: "$0.01"
    - name: decide
      duration: {mean: 8s, cv: 0.3}
      model: {prompt_tokens: 2000, max_tokens: 400, completion_tokens: 250}
      review: {probability: 0.1}
tenants:
  - name: bank
    tier: standard
    policy: {run_sla: 10m}
    arrivals: 100/day
"""


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _scenarios(n: int) -> Tally:
    from hypothesis import given
    from hypothesis import strategies as st

    from tenantflow.sim import ScenarioError, parse_scenario

    tally = Tally()
    base = yaml.safe_load(_SCENARIO)
    paths = _paths(base)
    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 10**9),
        st.sampled_from(fuzz_numbers.HOSTILE),
        st.floats(allow_nan=True),
        st.text(max_size=10),
        st.sampled_from(["-1h", "0s", "1/0", "$-1", "eu-west-9", "[]"]),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )
    mutation = st.one_of(
        st.tuples(st.just("set"), st.sampled_from(paths), junk),
        st.tuples(st.just("drop"), st.sampled_from(paths), st.none()),
        st.tuples(st.just("add"), st.sampled_from(paths), junk),
        st.tuples(st.just("cut"), st.integers(0, len(_SCENARIO)), st.text(max_size=6)),
    )

    @_hypothesis(n)
    @given(mutations=st.lists(mutation, min_size=1, max_size=3))
    def one(mutations: list[tuple[Any, ...]]) -> None:
        text = _mutate(base, mutations)
        tally.attempt(
            f"{mutations}",
            lambda: parse_scenario(text, source="fuzz.yaml"),
            lambda exc: (
                isinstance(exc, ScenarioError)
                and exc.message.startswith("fuzz.yaml")
                and "\n" not in exc.message.strip()
            ),
        )

    one()
    return tally


def _mutate(base: dict[str, Any], mutations: list[tuple[Any, ...]]) -> str:
    data = json.loads(json.dumps(base))
    text: str | None = None
    for kind, where, value in mutations:
        if kind == "cut":
            source = text if text is not None else yaml.safe_dump(data, sort_keys=False)
            text = source[:where] + value + source[where + len(value) :]
            continue
        *parents, last = where
        node: Any = data
        try:
            for part in parents:
                node = node[part]
            if kind == "set":
                node[last] = value
            elif kind == "drop":
                del node[last]
            elif isinstance(node, dict):
                node[f"{last}_extra"] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or retyped the path
    return text if text is not None else yaml.safe_dump(data, sort_keys=False)
