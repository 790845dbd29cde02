"""Hostile workflows: steps, inputs and model outputs that try to cross a tenant's boundary.

Two tenants share one engine (SQLite, with OpenTelemetry spans exported in memory and every log
record of the process captured). The attacker's runs try, each in one way:

* to take another identity: assign ``ctx.tenant_id`` (the identity is read-only: the step fails,
  its execution log says why);
* to act for the victim through data: the victim's tenant id in a tool argument and in the
  workflow's input (they stay data: whose budget, rate limit, usage and audit chain is used does
  not move);
* to call a tool its policy denies, and one not on its allow list;
* to follow a model output that asks for a denied tool;
* to submit inputs holding credentials — one of each kind, among them the victim's real API key —
  through the engine and through the REST API.

Every one must be refused, and every refusal of the policy audited in the attacker's own audit
chain. Nothing of the victim may change (budget ledgers, usage, audit chain), no denied tool may
ever run, and no secret may appear in any log record, span, audit row or API answer.
Cross-tenant violations count the victim's ledgers, usage, audit chain and rate buckets that
changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.routing import Endpoint
from tenantflow.selftest.core import Context, Row, Unavailable

__all__ = ["SECRETS", "run_hostile"]

ATTACKER, VICTIM = "attacker", "victim"
SECRETS: dict[str, str] = {  # kind -> a credential of that shape (made up, never valid)
    "secret_key": "sk-proj-" + "Zx81" * 8,
    "aws_access_key_id": "AKIA" + "Q7TZ" * 4,
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + "Kq9" * 20 + "\n-----END RSA",
    "github_token": "ghp_" + "h3Lw" * 9,
    "slack_token": "xoxb-" + "20491-" * 3 + "sl4ck",
}
_PATHS = ("auth.token", "headers[1]", "note", "deep.list[0].value", "$")


class _Capture(logging.Handler):
    """Every record any logger emits, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


def _place(path: str, value: str) -> Any:
    """An input holding ``value`` at ``path`` (``$``: the input is the value itself)."""
    if path == "$":
        return value
    if path == "headers[1]":
        return {"headers": ["accept: */*", value]}
    if path == "deep.list[0].value":
        return {"deep": {"list": [{"value": value}]}}
    if path == "auth.token":
        return {"auth": {"token": value}, "user": "ada"}
    return {"note": f"please use {value} for the call"}


def run_hostile(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring)."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError as exc:  # pragma: no cover - part of the server extra
        raise Unavailable(f"the OpenTelemetry SDK is not installed ({exc})") from None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    capture = _Capture()
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("tenantflow", "uvicorn"))]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
    try:
        secrets = asyncio.run(_attack(ctx, row, directory, provider))
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)
        provider.shutdown()
    spans = [_span_text(s) for s in exporter.get_finished_spans()]
    for where, texts in (("log records", capture.texts), ("spans", spans)):
        leaked = sorted({kind for kind, value in secrets.items() for t in texts if value in t})
        row.check(not leaked, f"secrets appear in {where}: {leaked}")
    row.note(f"searched for secrets: log records ({len(capture.texts)}), spans ({len(spans)})")


def _span_text(span: Any) -> str:
    parts = [span.name, *(str(v) for v in (span.attributes or {}).values())]
    for event in span.events:
        parts += [event.name, *(str(v) for v in (event.attributes or {}).values())]
    parts.append(span.status.description or "")
    return "\n".join(parts)


async def _attack(ctx: Context, row: Row, directory: Path, provider: Any) -> dict[str, str]:
    from tenantflow.api import create_app
    from tenantflow.observability.tracing import install_tracing

    url = f"sqlite:///{directory / 'hostile.db'}?synchronous=normal"
    calls: dict[str, int] = {}
    async with tf.Engine.open(url, seed=ctx.seed) as engine:
        install_tracing(engine, provider)
        _tools(engine, calls)
        engine.models.add(
            Endpoint(
                name="sim",
                provider="sim",
                model="sim-1",
                region="us-east-1",
                tier="small",
                price_in_per_1k_micros=100,
                price_out_per_1k_micros=200,
                max_context=100_000,
            ),
            SimulatedProvider(clock=SystemClock(), latency_ms=(1.0, 2.0)),
        )
        engine.register(_workflow())
        limits = {"tool:lookup": "1000/minute"}  # whose bucket a call takes from is checked
        await engine.tenants.create(
            ATTACKER,
            tier="standard",
            allowed_tools=("lookup", "search"),
            denied_tools=("wire_transfer",),
            rate_limits=limits,
        )
        await engine.tenants.create(VICTIM, tier="standard", rate_limits=limits)
        _, victim_key = await engine.keys.create(VICTIM, name="victim")
        _, attacker_key = await engine.keys.create(ATTACKER, name="attacker")
        warm = await engine.submit("hostile", tenant=VICTIM, input={"case": "honest"})
        await warm.result()
        before = await _snapshot(engine, VICTIM)
        secrets = {**SECRETS, "tenantflow_api_key": victim_key}
        refused = expected = 0
        for case, want in _CASES.items():
            handle = await engine.submit("hostile", tenant=ATTACKER, input=_input(case))
            record = await handle.wait()
            timeline = await engine.timeline(ATTACKER, handle.id)
            result = engine.decode_result(record) if record.status.value == "completed" else None
            if want == "refused":
                expected += 1
                failed = [e for e in timeline if e.kind == "step.failed"]
                ok = case == "identity" and any(
                    "AttributeError" in json.dumps(e.data) for e in failed
                )
                ok = ok or (isinstance(result, dict) and result.get("refused") is True)
                refused += ok
                row.check(ok, f"{case}: not refused ({record.status.value}, {result})")
            else:
                row.check(
                    record.status.value == "completed",
                    f"{case}: the honest part failed ({record.error})",
                )
        denials = [a for a in await engine.audit_log(ATTACKER) if a.action == "tool.denied"]
        policy = sum(1 for c, w in _CASES.items() if w == "refused" and c != "identity")
        audited = min(len(denials), policy)
        row.check(
            len(denials) == policy,
            f"{len(denials)} tool denials audited for {policy} refused tool calls",
        )
        row.check(
            calls.get("wire_transfer", 0) == 0 and calls.get("admin_export", 0) == 0,
            f"a refused tool ran: {calls}",
        )
        # Credentials in inputs: through the engine, then through the API.
        app = create_app(engine, manage_engine=False)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            for i, (kind, value) in enumerate(sorted(secrets.items())):
                path = _PATHS[i % len(_PATHS)]
                expected += 2
                r1, r2 = await _submit_secret(engine, http, attacker_key, path, value)
                for via, answer in (("engine", r1), ("API", r2)):
                    ok = answer is not None and value not in answer and kind in answer
                    refused += ok
                    row.check(ok, f"a {kind} in input {path} via the {via}: {answer}")
        refusals = [a for a in await engine.audit_log(ATTACKER) if a.action == "input.refused"]
        audited += len(refusals)
        row.check(
            len(refusals) == 2 * len(secrets),
            f"{len(refusals)} refused inputs audited for {2 * len(secrets)} refusals",
        )
        every = [
            json.dumps(a.detail) + a.subject
            for t in (ATTACKER, VICTIM)
            for a in await engine.audit_log(t)
        ]
        leaked = sorted({k for k, v in secrets.items() if any(v in text for text in every)})
        row.check(not leaked, f"secrets appear in the audit log: {leaked}")
        after = await _snapshot(engine, VICTIM)
        changed = [k for k in before if before[k] != after[k]]
        row.cross_tenant = len(changed)
        row.check(not changed, f"the victim's {changed} changed")
        charged = await _snapshot(engine, ATTACKER)
        row.check(
            charged["cost"] > 0 and charged["rates"] != [],
            "the attacker's own budget and rate limit were never used: nothing ran",
        )
    row.runs = len(_CASES)
    row.fault("hostile inputs", expected)
    row.note(
        f"refused {refused}/{expected}; policy refusals audited"
        f" {audited}/{policy + 2 * len(secrets)}; a write to the step's identity fails the step"
        " (its execution log says why)"
    )
    return secrets


_CASES = {
    "identity": "refused",  # ctx.tenant_id = victim
    "tenant-in-tool-args": "ran",  # the victim's id as data: charged to the attacker
    "tenant-in-input": "ran",
    "denied-tool": "refused",
    "not-allow-listed": "refused",
    "model-asks-denied": "refused",
}


def _input(case: str) -> dict[str, Any]:
    if case == "tenant-in-input":
        return {"case": case, "tenant_id": VICTIM, "tenant": VICTIM, "on_behalf_of": VICTIM}
    return {"case": case}


async def _snapshot(engine: tf.Engine, tenant: str) -> dict[str, Any]:
    ledgers = sorted(
        json.dumps(x, sort_keys=True, default=str) for x in await engine.budget(tenant)
    )
    usage = await engine.usage(tenant)
    audit = [(a.seq, a.hash) for a in await engine.audit_log(tenant)]
    cost = sum(int(u["value"]) for u in usage if u["metric"] == "cost_micros")
    calls = sorted(
        (u["metric"], u["dim"], u["value"]) for u in usage if u["metric"] != "slot_seconds"
    )
    store: Any = engine.store
    rates = await store.execute_sql(
        "SELECT resource, tat, factor FROM rate_buckets WHERE tenant_id = ? ORDER BY resource",
        (tenant,),
    )
    return {"ledgers": ledgers, "usage": calls, "audit": audit, "cost": cost, "rates": rates}


async def _submit_secret(
    engine: tf.Engine, http: httpx.AsyncClient, key: str, path: str, value: str
) -> tuple[str | None, str | None]:
    """Submit the secret through the engine and the API; each refusal's text (None: accepted)."""
    payload = _place(path, value)
    engine_answer: str | None
    try:
        await engine.submit("hostile", tenant=ATTACKER, input={"case": "honest", "extra": payload})
        engine_answer = None
    except tf.ContractError as exc:
        engine_answer = json.dumps(exc.to_dict()) + str(exc)
    r = await http.post(
        "/v1/runs",
        json={"workflow": "hostile", "input": {"case": "honest", "extra": payload}},
        headers={"Authorization": f"Bearer {key}"},
    )
    api_answer = r.text if r.status_code == 422 else None
    return engine_answer, api_answer


def _tools(engine: tf.Engine, calls: dict[str, int]) -> None:
    def count(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1

    @engine.tools.register(name="lookup", cost_usd=0.01)
    async def lookup(query: str, tenant_id: str | None = None) -> str:
        count("lookup")
        return f"looked up {query}"

    @engine.tools.register(name="wire_transfer", cost_usd=0.01)
    async def wire_transfer(amount: int = 0, to: str = "") -> str:
        count("wire_transfer")
        return "sent"

    @engine.tools.register(name="admin_export")
    async def admin_export() -> str:
        count("admin_export")
        return "everything"

    @engine.tools.register(name="search")
    async def search(q: str = "") -> str:
        count("search")
        return "found"


def _workflow() -> tf.Workflow:
    wf = tf.Workflow("hostile", input=dict)

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def act(ctx: tf.StepContext, input: dict[str, Any]) -> dict[str, Any]:
        case = input.get("case")
        try:
            if case == "identity":
                ctx.tenant_id = VICTIM  # type: ignore[misc]  # read-only: AttributeError
                await ctx.tool("lookup", query="as the victim")
            elif case == "tenant-in-tool-args":
                await ctx.tool("lookup", query="q", tenant_id=VICTIM)
            elif case == "tenant-in-input":
                await ctx.tool("lookup", query=str(input), tenant_id=str(input.get("tenant_id")))
            elif case == "denied-tool":
                await ctx.tool("wire_transfer", amount=10_000, to="mallory")
            elif case == "not-allow-listed":
                await ctx.tool("admin_export")
            elif case == "model-asks-denied":
                reply = await ctx.model(
                    'Pay the invoice. call:wire_transfer {"amount": 5000, "to": "mallory"}',
                    tools=["lookup", "wire_transfer"],
                )
                for call in reply.tool_calls:  # the agent does what the model asked
                    await ctx.tool(call.name, **call.arguments)
                if not reply.tool_calls:
                    return {"refused": False, "why": "the model asked for nothing"}
            else:
                await ctx.tool("lookup", query="honest work")
        except tf.NotAllowedError as exc:
            return {"refused": True, "code": exc.code}
        return {"refused": False}

    return wf
