"""Fuzz, part two: hostile numbers and malformed command lines, case by case.

Every numeric field is given every hostile value (:data:`HOSTILE`: integers just past the store's
64-bit range and far past it, infinities and NaN):

* **policy numbers** — every numeric and duration field of a policy (budget, caps, weight, rate
  limits, durations);
* **spec numbers** — ``Retry`` (attempts, multiplier, jitter), ``Agent`` (iterations, tokens)
  and ``max_revisions``;
* **scenario numbers** — every numeric leaf of the fuzz scenario file;
* **run inputs** — the value at the top, in a field, in a list and deep inside, through
  ``engine.submit`` and through ``POST /v1/runs`` (raw JSON: ``1e309``, 25-digit integers).

Each case is refused with a typed error naming the field (and its error body is plain JSON, at
most :data:`MAX_ERROR_CHARS` long), or accepted and then stored exactly as validated: a policy's
JSON reads back equal with every integer in 64 bits; a run's stored input equals its input.

* **command line** — malformed server URLs, unknown flags, bad option values, unknown commands,
  missing arguments: exit 2 with exactly one ``error:`` line and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import tenantflow as tf
from tenantflow.domain.limits import INT64_MAX, INT64_MIN, find_non_finite
from tenantflow.errors import TenantflowError

__all__ = ["HOSTILE", "MAX_ERROR_CHARS", "cli_cases", "policy_numbers", "run_inputs"]

HOSTILE: tuple[Any, ...] = (
    INT64_MAX + 1,
    INT64_MIN - 1,
    2**64,
    2**80,
    10**30,
    math.inf,
    -math.inf,
    math.nan,
)
MAX_ERROR_CHARS = 2000


def _plain(exc: TenantflowError) -> bool:
    """The error's dict is strict JSON of bounded size (what an error body carries)."""
    try:
        text = json.dumps(exc.to_dict(), allow_nan=False)
    except (TypeError, ValueError):
        return False
    return len(text) <= MAX_ERROR_CHARS


def _in_range(value: Any) -> bool:
    """Every int inside ``value`` fits 64 bits and no float is non-finite."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, dict):
        return all(_in_range(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_in_range(v) for v in value)
    return find_non_finite(value) is None


# -- policies ----------------------------------------------------------------------------------


def _policy_overrides() -> list[tuple[str, Any]]:
    """(field path, override builder) for every numeric or duration field of a policy."""
    from tenantflow.domain.policy import Budget, Policy

    def numeric(annotation: Any) -> bool:
        text = str(annotation)
        return any(t in text for t in ("int", "float", "timedelta"))

    out: list[tuple[str, Any]] = []
    for name, info in Policy.model_fields.items():
        if numeric(info.annotation) and name != "rate_limits":
            out.append((name, lambda v, n=name: {n: v}))
    for name, info in Budget.model_fields.items():
        if numeric(info.annotation):
            out.append((f"budget.{name}", lambda v, n=name: {"budget": {n: v}}))
    rate = "rate_limits.tool:x"
    out.append((rate, lambda v: {"rate_limits": {"tool:x": {"count": v, "window_s": 60}}}))
    out.append((rate, lambda v: {"rate_limits": {"tool:x": {"count": 5, "window_s": v}}}))
    out.append((rate, lambda v: {"rate_limits": {"tool:x": {"rate": "5/hour", "burst": v}}}))
    return out


def policy_numbers(tally: Any) -> None:
    """Every numeric policy field × every hostile value (plus dollar strings past the range)."""
    from tenantflow.domain.policy import Policy

    cases = [(path, build(v)) for path, build in _policy_overrides() for v in HOSTILE]
    for money in ("budget.run_micros", "budget.period_micros"):
        for text in ("$1e309", "$-1e309", "$9223372036855", "$NaN", "$" + "9" * 5000):
            cases.append((money, {"budget": {money.split(".")[1]: text}}))
    for path, override in cases:
        what = f"policy {path} = {str(override)[:80]}"
        built: list[Policy] = []
        accepted = tally.attempt(
            what,
            lambda o=override, into=built: into.append(Policy.for_tier("standard", **o)),
            lambda exc, p=path: _plain(exc) and p in str(exc.fields.get("field", "")),
        )
        if accepted:
            _stored_as_validated(tally, what, built[0])


def _stored_as_validated(tally: Any, what: str, policy: Any) -> None:
    """An accepted policy's JSON (what the store keeps) holds it exactly, in range."""
    from tenantflow.domain.policy import Policy

    try:
        text = json.dumps(policy.model_dump(mode="json"), allow_nan=False)
        again = Policy.model_validate_json(text)
    except Exception as exc:
        tally.crash(f"{what} (accepted, then not storable)", exc)
        return
    if again != policy or not _in_range(json.loads(text)):
        tally.unclear.append(f"{what}: accepted, but what is stored differs or is out of range")


# -- specs -------------------------------------------------------------------------------------


def spec_numbers(tally: Any) -> None:
    """``Retry`` and ``Agent`` fields and ``max_revisions`` × every hostile value."""
    for field in ("max_attempts", "multiplier", "jitter"):
        for value in HOSTILE:
            retry: list[tf.Retry] = []
            if tally.attempt(
                f"Retry({field}={value!r})",
                lambda f=field, v=value, into=retry: into.append(tf.Retry(**{f: v})),
                lambda exc, f=field: _plain(exc) and exc.fields.get("field") == f,
            ):
                try:  # an accepted policy must also back off without overflowing
                    delays = [retry[0].delay_s(n, 0.5) for n in (1, 100, 10_000)]
                    if not all(math.isfinite(d) and d >= 0 for d in delays):
                        tally.unclear.append(f"Retry({field}={value!r}): delays {delays}")
                except Exception as exc:
                    tally.crash(f"Retry({field}={value!r}).delay_s", exc)
    for field in ("max_iterations", "max_tokens"):
        for value in HOSTILE:
            tally.attempt(
                f"Agent({field}={value!r})",
                lambda f=field, v=value: tf.Agent(**{f: v}),
                lambda exc, f=field: _plain(exc) and exc.fields.get("field") == f,
            )
    for value in HOSTILE:

        def build(v: Any = value) -> None:
            wf = tf.Workflow("hostile", input=int, max_revisions=v)

            @wf.step
            async def one(ctx: tf.StepContext, input: int) -> int:
                return input

        tally.attempt(
            f"Workflow(max_revisions={value!r})",
            build,
            lambda exc: _plain(exc) and exc.fields.get("field") == "max_revisions",
        )


# -- scenarios ---------------------------------------------------------------------------------


def scenario_numbers(tally: Any, base: dict[str, Any], paths: list[tuple[Any, ...]]) -> None:
    """Every numeric leaf of the scenario × every hostile value: refused in one line naming the
    file, or parsed."""
    import yaml

    from tenantflow.sim import ScenarioError, parse_scenario

    def leaf(path: tuple[Any, ...]) -> Any:
        node: Any = base
        for part in path:
            node = node[part]
        return node

    numeric = [
        p for p in paths if isinstance(leaf(p), int | float) and not isinstance(leaf(p), bool)
    ]
    for path in numeric:
        for value in HOSTILE:
            data = json.loads(json.dumps(base))
            node = data
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
            text = yaml.safe_dump(data, sort_keys=False)
            tally.attempt(
                f"scenario {'.'.join(map(str, path))} = {value!r}",
                lambda t=text: parse_scenario(t, source="fuzz.yaml"),
                lambda exc: (
                    isinstance(exc, ScenarioError)
                    and exc.message.startswith("fuzz.yaml")
                    and "\n" not in exc.message.strip()
                    and _plain(exc)
                ),
            )


# -- run inputs --------------------------------------------------------------------------------

_PLACES: tuple[tuple[str, Any], ...] = (
    ("$", lambda v: v),
    ("amount", lambda v: {"amount": v}),
    ("lines[1]", lambda v: {"lines": [1, v]}),
    ("a.b[0].c", lambda v: {"a": {"b": [{"c": v}]}}),
)


def _echo() -> tf.Workflow:
    wf = tf.Workflow("echo", input=Any)

    @wf.step
    async def back(ctx: tf.StepContext, input: Any) -> Any:
        return input

    return wf


def run_inputs(tally: Any, directory: Path) -> None:
    """Hostile numbers in run inputs, through the library and the REST API."""
    asyncio.run(_run_inputs(tally, directory))


async def _run_inputs(tally: Any, directory: Path) -> None:
    import httpx

    from tenantflow.api import create_app

    url = f"sqlite:///{directory / 'inputs.db'}?synchronous=normal"
    engine = tf.Engine.open(url, seed=1)
    app = create_app(engine, setup=[lambda e: e.register(_echo())])
    async with app.router.lifespan_context(app):
        await engine.tenants.create("fuzz", tier="standard")
        _, key = await engine.keys.create("fuzz", name="fuzz")
        for where, place in _PLACES:
            for value in HOSTILE:
                await _library_case(tally, engine, where, place(value), value)
        transport = httpx.ASGITransport(app)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
            for where, place in _PLACES:
                for number in ("1e309", "-1e400", "9" * 25, "-" + "9" * 25, "1" + "0" * 400):
                    text = json.dumps(place("§"), ensure_ascii=False).replace('"§"', number)
                    await _api_case(tally, client, headers, where, text)


async def _library_case(tally: Any, engine: tf.Engine, where: str, value: Any, number: Any) -> None:
    tally.cases += 1
    what = f"engine.submit(input at {where} = {number!r})"
    try:
        handle = await engine.submit("echo", tenant="fuzz", input=value)
    except TenantflowError as exc:
        tally.refused += 1
        finite = isinstance(number, int)
        if finite or exc.fields.get("field") != where or not _plain(exc):
            tally.unclear.append(f"{what}: {exc.message[:160]}")
        return
    except Exception as exc:
        tally.crash(what, exc)
        return
    tally.accepted += 1
    if not isinstance(number, int):
        tally.unclear.append(f"{what}: a non-finite number was accepted")
        return
    record = await handle.wait(timedelta(seconds=10))
    if json.loads(record.input_json) != value or engine.decode_result(record) != value:
        tally.unclear.append(f"{what}: stored {record.input_json[:80]!r}, not the input")


async def _api_case(
    tally: Any, client: Any, headers: dict[str, str], where: str, text: str
) -> None:
    tally.cases += 1
    what = f"POST /v1/runs input {text[:60]}"
    body = '{"workflow": "echo", "input": ' + text + "}"
    try:
        r = await client.post("/v1/runs", content=body, headers=headers)
    except Exception as exc:
        tally.crash(what, exc)
        return
    if r.status_code >= 500:
        tally.server_errors.append(f"{what}: {r.status_code} {r.text[:120]}")
        return
    sent = json.loads(text)
    if r.status_code == 201:
        tally.accepted += 1
        run = (await client.get(f"/v1/runs/{r.json()['id']}", headers=headers)).json()
        if find_non_finite(sent) is not None or run.get("input") != sent:
            tally.unclear.append(f"{what}: stored {str(run.get('input'))[:80]}, not the input")
        return
    tally.refused += 1
    field = "body.input" + ("" if where == "$" else f".{where}")
    error = r.json().get("error", {}) if r.headers.get("content-type") == "application/json" else {}
    if r.status_code != 422 or error.get("field") != field or len(r.text) > MAX_ERROR_CHARS:
        tally.unclear.append(f"{what}: {r.status_code} {r.text[:160]}")


# -- the command line --------------------------------------------------------------------------

BAD_URLS = (
    "http://[::1",
    "http://[::1]:port",
    "http://exa mple.com",
    "http://h:-1",
    "http://h:70000",
    "ftp://x",
    "localhost:8000",
    "http://",
    "://",
    "http://" + "a" * 5000,
)
BAD_CALLS: tuple[tuple[str, ...], ...] = (
    ("runs", "list", "--bogus"),
    ("runs", "list", "--limit", "abc"),
    ("runs", "list", "--limit", str(2**80)),
    ("runs", "list", "--limit", "1e309"),
    ("runs", "list", "--limti", "3"),
    ("nosuch",),
    ("runs", "nosuch"),
    ("runs", "show"),
    ("runs", "diff", "run_x", "1", "nan"),
    ("runs", "state", "run_x", "--version", "inf"),
    ("tenants", "create"),
    ("tenants", "create", "t", "--tier"),
    ("serve", "--port", str(2**64)),
    ("--nope",),
    ("--db",),
    ("memory", "list", "--limit", "-" + "9" * 30),
)


def cli_cases(tally: Any, directory: Path) -> None:
    """Malformed URLs and flags: each is exit 2 with one ``error:`` line on stderr.

    Each call is the installed command in a process of its own (the self-test never imports the
    command line, which imports the self-test)."""
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    base = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    base["TENANTFLOW_DATABASE_URL"] = f"sqlite:///{directory / 'cli.db'}"
    listing: tuple[str, ...] = ("runs", "list")
    calls = [(listing, {"TENANTFLOW_URL": u, "TENANTFLOW_API_KEY": "k"}) for u in BAD_URLS]
    calls += [(args, {}) for args in BAD_CALLS]

    def run(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tenantflow.cli.main", *args],
            capture_output=True,
            text=True,
            env={**base, **env},
            timeout=120,
            check=False,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [(args, env, pool.submit(run, args, env)) for args, env in calls]
    for args, env, future in futures:
        tally.cases += 1
        what = f"tenantflow {' '.join(args)[:60]} {str(env)[:60]}"
        try:
            proc = future.result()
        except Exception as exc:
            tally.crash(what, exc)
            continue
        lines = proc.stderr.splitlines()
        if proc.returncode == 0:
            tally.accepted += 1
            tally.unclear.append(f"{what}: accepted")
            continue
        tally.refused += 1
        one = len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 1000
        if proc.returncode != 2 or not one or proc.stdout:
            if "Traceback" in proc.stderr:
                tally.crashes.append(f"{what}: {proc.stderr.strip().splitlines()[-1][:160]}")
            else:
                tally.unclear.append(f"{what}: exit {proc.returncode}, {proc.stderr[:160]!r}")
