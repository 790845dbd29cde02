"""Prometheus metrics per tenant, with a bounded number of series.

``install_metrics(engine, registry)`` attaches an :class:`EngineMetrics` observer to the engine
and a collector to ``registry``; serve ``prometheus_client.generate_latest(registry)`` at
``/metrics``. Needs ``prometheus-client`` (the ``server`` extra).

Two kinds of metric, by cost:

* **Counters and histograms** are updated from engine events (``tenantflow.observability.
  events``) on the hot path: a dict lookup of the cached label child and an increment, a few
  microseconds per step.
* **Gauges** (queue depths, running steps and caps, slots, the fairness index, budgets) are
  read from the engine's in-memory state when Prometheus scrapes: nothing is spent per step.

Cardinality
-----------
The only unbounded identifier that is ever a label value is the tenant id, and only for at
most ``max_tenants`` tenants (see :class:`TenantLabels`): the tenants given in ``tenants=``
first, then the first tenants seen, in order, until there are ``max_tenants``. A tenant keeps
its label for the life of the process (so its counters never jump between series); every other
tenant is counted under ``tenant="_other"`` (never a valid tenant id: ids start with a letter or
digit). Every other label takes a fixed set of values (outcomes, directions, kinds, actions).
So the series count is bounded by ``(max_tenants + 1) × 185 + 7 + 13 × stores`` — per
``tenant`` value: 30 counter children of 2 samples (value and ``_created``), 5 run-latency
children of 20 samples and 1 step-latency child of 18, and 7 gauges; plus 7 platform gauges and,
per store (the default one and each region's), the commit-time histogram's 11 buckets, count and
sum — about 18,700 at the default of 100, whatever the number of tenants, runs or steps
(:data:`SERIES_PER_TENANT`, :data:`PLATFORM_SERIES`, :data:`SERIES_PER_STORE`).
Run ids, step keys, prompts, inputs and workflow names are never labels.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from tenantflow.domain import budget as budget_math
from tenantflow.domain.fairness import jain_index, max_min_shares
from tenantflow.domain.ids import check_tenant
from tenantflow.domain.records import RunStatus
from tenantflow.errors import ConfigurationError
from tenantflow.observability.events import (
    DEGRADATIONS,
    Degraded,
    ModelCallFinished,
    Observer,
    RateLimitWait,
    ReviewSlaBreached,
    RunFinished,
    RunSubmitted,
    StepFinished,
    ToolCallFinished,
)

if TYPE_CHECKING:
    from tenantflow.engine.engine import Engine

__all__ = [
    "OTHER",
    "PLATFORM_SERIES",
    "SERIES_PER_STORE",
    "SERIES_PER_TENANT",
    "EngineMetrics",
    "TenantLabels",
    "install_metrics",
]

log = logging.getLogger("tenantflow.observability")

OTHER = "_other"
"""The ``tenant`` label of every tenant beyond ``max_tenants``."""

RUN_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 86400)
"""Run latency buckets: a run may take a tenth of a second or wait a day for a reviewer."""

STEP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

SERIES_PER_TENANT = 185
"""The most series one ``tenant`` label value can have (see the module docstring)."""
PLATFORM_SERIES = 7
"""Series with neither a ``tenant`` nor a ``store`` label."""
SERIES_PER_STORE = 13
"""Series of one ``store`` label value (the commit-time histogram)."""

_RUN_OUTCOMES = frozenset({"completed", "failed", "compensated", "cancelled"})
_DEGRADATIONS = frozenset(DEGRADATIONS)


class TenantLabels:
    """Which ``tenant`` label value a tenant's series carry: its id, or :data:`OTHER`.

    The tenants in ``tenants`` are labelled from the start; the room left up to ``max_tenants``
    is given first-come, to each tenant the first time it is seen (by an event or a scrape). A
    label, once given, is kept. Thread-safe: scrapes may run on another thread.

    Args:
        max_tenants: how many tenants get a label of their own (>= 0).
        tenants: tenants to label whatever comes first (at most ``max_tenants``).

    Raises:
        ConfigurationError: ``max_tenants < 0``, an invalid tenant id, or more ``tenants`` than
            ``max_tenants``.
    """

    def __init__(self, max_tenants: int, tenants: Iterable[str] = ()) -> None:
        if max_tenants < 0:
            raise ConfigurationError(
                "max_tenants must be >= 0", field="max_tenants", value=max_tenants
            )
        explicit = [check_tenant(t) for t in dict.fromkeys(tenants)]
        if len(explicit) > max_tenants:
            raise ConfigurationError(
                f"{len(explicit)} tenants listed but max_tenants is {max_tenants}",
                field="tenants",
            )
        self.max_tenants = max_tenants
        self._labels: dict[str, str] = {t: t for t in explicit}
        self._lock = threading.Lock()

    def __call__(self, tenant_id: str) -> str:
        label = self._labels.get(tenant_id)
        if label is not None:
            return label
        if len(self._labels) >= self.max_tenants or not _valid(tenant_id):
            return OTHER
        with self._lock:
            if tenant_id not in self._labels and len(self._labels) < self.max_tenants:
                self._labels[tenant_id] = tenant_id
            return self._labels.get(tenant_id, OTHER)

    def __len__(self) -> int:
        return len(self._labels)

    def labelled(self) -> list[str]:
        """The tenants with a label of their own, in the order they got it."""
        return list(self._labels)


def _valid(tenant_id: str) -> bool:
    """A label value is never an unchecked string (and so ``_other`` is nobody's own label)."""
    try:
        check_tenant(tenant_id)
    except ConfigurationError:
        return False
    return True


def install_metrics(
    engine: Engine,
    registry: CollectorRegistry,
    *,
    max_tenants: int = 100,
    tenants: Iterable[str] = (),
    budget_refresh_s: float = 15.0,
) -> EngineMetrics:
    """Record the engine's metrics in ``registry``: attach an observer and a scrape collector.

    Args:
        engine: the engine to observe (before or after it starts).
        registry: where the metrics are registered; expose it at ``/metrics``.
        max_tenants: how many tenants get a ``tenant`` label of their own; the rest are summed
            under ``tenant="_other"`` (see :class:`TenantLabels` and the module docstring).
        tenants: tenants that get their label first, whatever order tenants are seen in.
        budget_refresh_s: how old the period budget figures may get (they are read from the
            store's ledgers, at most this often, when this engine executes or is scraped on its
            event loop; :meth:`EngineMetrics.refresh_budgets` reads them at once).

    Returns:
        The observer; :meth:`EngineMetrics.close` detaches it again.

    Raises:
        ConfigurationError: a bad ``max_tenants`` or ``tenants``.
        ValueError: ``registry`` already holds tenantflow metrics.
    """
    metrics = EngineMetrics(
        engine,
        registry,
        TenantLabels(max_tenants, tenants),
        budget_refresh_s=budget_refresh_s,
    )
    engine.observers.append(metrics)
    return metrics


class EngineMetrics(Observer):
    """The metrics of one engine (see the module docstring and ``docs/observability.md``)."""

    def __init__(
        self,
        engine: Engine,
        registry: CollectorRegistry,
        labels: TenantLabels,
        *,
        budget_refresh_s: float = 15.0,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.labels = labels
        self.budget_refresh_s = budget_refresh_s
        r = registry
        self.runs_submitted = Counter(
            "tenantflow_runs_submitted",
            "Runs recorded by this engine (admitted at once or queued).",
            ["tenant"],
            registry=r,
        )
        self.run_duration = Histogram(
            "tenantflow_run_duration_seconds",
            "Run latency, submission to end, by outcome.",
            ["tenant", "outcome"],
            buckets=RUN_BUCKETS_S,
            registry=r,
        )
        self.step_attempts = Counter(
            "tenantflow_step_attempts",
            "Step attempts that gave their slot back, by outcome.",
            ["tenant", "outcome"],
            registry=r,
        )
        self.step_duration = Histogram(
            "tenantflow_step_duration_seconds",
            "Slot time of a step attempt (start to slot release).",
            ["tenant"],
            buckets=STEP_BUCKETS_S,
            registry=r,
        )
        self.model_calls = Counter(
            "tenantflow_model_calls",
            "Model calls made (not replayed), by outcome (ok, error).",
            ["tenant", "outcome"],
            registry=r,
        )
        self.model_tokens = Counter(
            "tenantflow_model_tokens",
            "Model tokens priced, by direction (input, output).",
            ["tenant", "direction"],
            registry=r,
        )
        self.tool_calls = Counter(
            "tenantflow_tool_calls",
            "Tool calls made (not replayed), by outcome (ok, error).",
            ["tenant", "outcome"],
            registry=r,
        )
        self.cost = Counter(
            "tenantflow_cost_usd",
            "Money charged for model and tool calls made by this process, in US dollars.",
            ["tenant"],
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "tenantflow_rate_limit_waits",
            "Times a step parked for a rate limit, by resource kind (tool, model, other).",
            ["tenant", "kind"],
            registry=r,
        )
        self.rate_limit_wait = Counter(
            "tenantflow_rate_limit_wait_seconds",
            "Time steps were told to wait for rate limits, by resource kind.",
            ["tenant", "kind"],
            registry=r,
        )
        self.sla_breaches = Counter(
            "tenantflow_sla_breaches",
            "SLA breaches: kind=review (a review task past its SLA), kind=run (a run that ended"
            " later than its policy's run_sla).",
            ["tenant", "kind"],
            registry=r,
        )
        self.degradations = Counter(
            "tenantflow_degradations",
            "Budget degradations, by action (cheaper_model, skip_optional, escalate_to_human,"
            " pause).",
            ["tenant", "action"],
            registry=r,
        )
        # Label children by label values: the hot path skips prometheus_client's own lookup.
        self._children: dict[tuple[object, ...], Any] = {}
        self._spent_micros: dict[str, int] = {}  # period spend per tenant, from the ledgers
        self._budget_read_s = -math.inf
        self._budget_task: asyncio.Task[None] | None = None
        self._collector = _EngineCollector(self)
        registry.register(self._collector)

    def close(self) -> None:
        """Detach from the engine and unregister every metric from the registry."""
        if self in self.engine.observers:
            self.engine.observers.remove(self)
        for collector in (
            self._collector,
            self.runs_submitted,
            self.run_duration,
            self.step_attempts,
            self.step_duration,
            self.model_calls,
            self.model_tokens,
            self.tool_calls,
            self.cost,
            self.rate_limit_waits,
            self.rate_limit_wait,
            self.sla_breaches,
            self.degradations,
        ):
            self.registry.unregister(collector)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- events (hot path) ----------------------------------------------------------------------

    def on_run_submitted(self, event: RunSubmitted) -> None:
        self._child(self.runs_submitted, self.labels(event.tenant_id)).inc()

    def on_run_finished(self, event: RunFinished) -> None:
        tenant = self.labels(event.tenant_id)
        outcome = event.status if event.status in _RUN_OUTCOMES else "other"
        latency_s = max(0.0, event.at_s - event.submitted_at_s)
        self._child(self.run_duration, tenant, outcome).observe(latency_s)
        if event.run_sla_s is not None and latency_s > event.run_sla_s:
            self._child(self.sla_breaches, tenant, "run").inc()

    def on_step_finished(self, event: StepFinished) -> None:
        tenant = self.labels(event.tenant_id)
        self._child(self.step_attempts, tenant, event.outcome).inc()
        self._child(self.step_duration, tenant).observe(max(0.0, event.at_s - event.started_at_s))

    def on_model_call_finished(self, event: ModelCallFinished) -> None:
        tenant = self.labels(event.tenant_id)
        self._child(self.model_calls, tenant, "ok" if event.error_type is None else "error").inc()
        if event.tokens_in:
            self._child(self.model_tokens, tenant, "input").inc(event.tokens_in)
        if event.tokens_out:
            self._child(self.model_tokens, tenant, "output").inc(event.tokens_out)
        self._charged(event.tenant_id, tenant, event.cost_micros, event.at_s)

    def on_tool_call_finished(self, event: ToolCallFinished) -> None:
        tenant = self.labels(event.tenant_id)
        self._child(self.tool_calls, tenant, "ok" if event.error_type is None else "error").inc()
        self._charged(event.tenant_id, tenant, event.cost_micros, event.at_s)

    def on_rate_limit_wait(self, event: RateLimitWait) -> None:
        tenant = self.labels(event.tenant_id)
        kind = event.resource.partition(":")[0]
        kind = kind if kind in ("tool", "model") else "other"
        self._child(self.rate_limit_waits, tenant, kind).inc()
        self._child(self.rate_limit_wait, tenant, kind).inc(max(0.0, event.wait_s))

    def on_degraded(self, event: Degraded) -> None:
        action = event.action if event.action in _DEGRADATIONS else "other"
        self._child(self.degradations, self.labels(event.tenant_id), action).inc()

    def on_review_sla_breached(self, event: ReviewSlaBreached) -> None:
        self._child(self.sla_breaches, self.labels(event.tenant_id), "review").inc()

    def _charged(self, tenant_id: str, tenant: str, micros: int, now_s: float) -> None:
        if micros:
            self._child(self.cost, tenant).inc(micros / 1_000_000)
            if tenant_id in self._spent_micros:  # until the next ledger read, count it here
                self._spent_micros[tenant_id] += micros
        if now_s - self._budget_read_s >= self.budget_refresh_s:
            self._refresh_soon(now_s)

    # -- period budgets, read from the ledgers ----------------------------------------------------

    async def refresh_budgets(self) -> None:
        """Read the period money ledger of every labelled tenant (one store read each)."""
        engine = self.engine
        self._budget_read_s = engine.clock.now()
        spent: dict[str, int] = {}
        for tenant_id in self.labels.labelled():
            info = engine.tenants.cached(tenant_id)
            if info is None or info.policy.budget.period_micros is None:
                continue
            rows = await engine.store_for_tenant(tenant_id).ledgers(tenant_id, "period")
            now_s = engine.clock.now()
            spent[tenant_id] = sum(
                0
                if budget_math.needs_reset(row["period_start"], now_s, info.policy.budget.period)
                else int(row["spent"])
                for row in rows
                if row["unit"] == "micros"
            )
        self._spent_micros = spent

    def _refresh_soon(self, now_s: float) -> None:
        """Start a ledger read in the background, unless one is running (event loop only)."""
        if self._budget_task is not None and not self._budget_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on an event loop (a scrape from another thread): keep the figures
        self._budget_read_s = now_s
        self._budget_task = loop.create_task(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_budgets()
        except Exception as exc:  # the store is down or closing: keep the last figures
            log.debug("budget metrics not refreshed: %s", exc)


class _EngineCollector:
    """Gauges read from the engine's memory at scrape time: no cost per step."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterator[Metric]:
        return iter([*_families(), _commit_family()])

    def collect(self) -> Iterator[Metric]:
        m = self._m
        engine = m.engine
        label = m.labels
        now_s = engine.clock.now()
        if now_s - m._budget_read_s >= m.budget_refresh_s:
            m._refresh_soon(now_s)  # for the next scrape; this one shows the last figures
        (
            runs_queued,
            runs_active,
            steps_queued,
            steps_running,
            running_cap,
            spent,
            limit,
            slots_used,
            slots_total,
            fairness,
            busy,
            labelled,
            commits,
            ops,
        ) = families = _families()
        dispatcher = engine.dispatcher
        running = dict(dispatcher.running_by)  # copies: a scrape may run on another thread
        queued = dict(dispatcher.queued_by)
        _per_tenant(steps_running, _by_label(running, label), label)
        _per_tenant(steps_queued, _by_label(queued, label), label)
        queued_runs, active_runs = _runs(engine, label)
        _per_tenant(runs_queued, queued_runs, label)
        _per_tenant(runs_active, active_runs, label)
        spent_micros = m._spent_micros
        for tenant_id in label.labelled():
            info = engine.tenants.cached(tenant_id)
            if info is None:
                continue
            policy = info.policy
            running_cap.add_metric([tenant_id], policy.max_running_steps)
            if policy.budget.period_micros is not None:
                limit.add_metric([tenant_id], policy.budget.period_micros / 1_000_000)
                if tenant_id in spent_micros:
                    spent.add_metric([tenant_id], spent_micros[tenant_id] / 1_000_000)
        scheduler = dispatcher.scheduler
        slots_used.add_metric([], scheduler.total_running)
        slots_total.add_metric([], scheduler.slots)
        fairness.add_metric([], fairness_index(engine, running, queued))
        busy.add_metric([], len(running.keys() | queued.keys()))
        labelled.add_metric([], len(label))
        commits.add_metric([], sum(rt.writer.batches for rt in engine.runtimes.values()))
        ops.add_metric([], sum(rt.writer.ops for rt in engine.runtimes.values()))
        return iter([*families, _commit_times(engine)])


def _commit_family() -> HistogramMetricFamily:
    return HistogramMetricFamily(
        "tenantflow_store_commit_seconds",
        "How long the store took to commit each group commit, from the writer handing it the"
        " batch to its answer (a wait for the store's connection included).",
        labels=["store"],
    )


def _commit_times(engine: Engine) -> HistogramMetricFamily:
    """The writers' commit times, one histogram per store (the default one and each region's)."""
    family = _commit_family()
    for store, runtime in engine.runtimes.items():
        writer = runtime.writer
        counts = list(writer.commit_counts)  # a copy: a scrape may run on another thread
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(writer.commit_bounds, counts, strict=False):
            total += count
            buckets.append((repr(bound), total))
        buckets.append(("+Inf", sum(counts)))
        family.add_metric([store], buckets, writer.commit_seconds)
    return family


def _families() -> tuple[GaugeMetricFamily, ...]:
    tenant = ["tenant"]
    return (
        GaugeMetricFamily(
            "tenantflow_runs_queued", "Runs waiting for admission (queue depth).", labels=tenant
        ),
        GaugeMetricFamily(
            "tenantflow_runs_active",
            "Admitted, unfinished runs (vs max_active_runs).",
            labels=tenant,
        ),
        GaugeMetricFamily(
            "tenantflow_steps_queued", "Ready steps waiting for a slot.", labels=tenant
        ),
        GaugeMetricFamily("tenantflow_steps_running", "Steps holding a slot.", labels=tenant),
        GaugeMetricFamily(
            "tenantflow_steps_running_cap",
            "The policy's max_running_steps (labelled tenants only).",
            labels=tenant,
        ),
        GaugeMetricFamily(
            "tenantflow_budget_period_spent_usd",
            "Money spent in the current budget period, from the ledger (labelled tenants with"
            " a period budget).",
            labels=tenant,
        ),
        GaugeMetricFamily(
            "tenantflow_budget_period_limit_usd",
            "The period money budget (labelled tenants with a period budget).",
            labels=tenant,
        ),
        GaugeMetricFamily("tenantflow_slots_in_use", "Slots held by step attempts."),
        GaugeMetricFamily("tenantflow_slots", "Slots of this engine."),
        GaugeMetricFamily(
            "tenantflow_fairness_index",
            "Jain's index of busy tenants' running steps over their weighted max-min fair"
            " share of the slots, now (1 = perfectly fair).",
        ),
        GaugeMetricFamily("tenantflow_tenants_busy", "Tenants with steps queued or running."),
        GaugeMetricFamily(
            "tenantflow_metrics_labelled_tenants",
            "Tenants with a tenant label of their own (at most max_tenants).",
        ),
        GaugeMetricFamily(
            "tenantflow_store_commits", "Store transactions committed (group commits)."
        ),
        GaugeMetricFamily("tenantflow_store_ops", "Transitions committed in those transactions."),
    )


def _by_label(values: dict[str, int], label: TenantLabels) -> Tally[str]:
    totals: Tally[str] = Tally()
    for tenant_id, value in values.items():
        totals[label(tenant_id)] += value
    return totals


def _per_tenant(family: GaugeMetricFamily, totals: Tally[str], label: TenantLabels) -> None:
    """One sample per labelled tenant (0 when idle), and the rest summed under ``_other``."""
    for tenant_id in label.labelled():
        family.add_metric([tenant_id], totals.get(tenant_id, 0))
    family.add_metric([OTHER], totals.get(OTHER, 0))


def _runs(engine: Engine, label: TenantLabels) -> tuple[Tally[str], Tally[str]]:
    """Runs waiting for admission, and admitted runs, by ``tenant`` label value."""
    queued: Tally[str] = Tally()
    active: Tally[str] = Tally()
    admission = engine.admission
    if engine.controls:  # one admission queue per tenant: O(max_tenants) lookups
        for tenant_id in label.labelled():
            queued[tenant_id] = admission.queued(tenant_id)
            active[tenant_id] = admission.active(tenant_id)
        queued[OTHER] = max(0, admission.total_queued - sum(queued.values()))
        active[OTHER] = max(0, admission.total_active - sum(active.values()))
        return queued, active
    # Controls off: one shared queue, so count the runs this engine holds (O(active runs)).
    for runtime in list(engine.runtimes.values()):
        for run in list(runtime.active.values()):
            tally = queued if run.status == RunStatus.QUEUED else active
            tally[label(run.tenant_id)] += 1
    return queued, active


def fairness_index(engine: Engine, running: dict[str, int], queued: dict[str, int]) -> float:
    """Jain's index of each busy tenant's running steps over its weighted max-min fair share.

    The fair shares are what a perfectly fair, work-conserving scheduler would give the tenants
    with work now: the engine's slots split by policy weight, nobody above its demand (running
    plus queued steps) or its ``max_running_steps`` (:func:`~tenantflow.domain.fairness.
    max_min_shares`). 1.0 when every busy tenant runs exactly its share; ``k/n`` when ``k`` of
    ``n`` take everything. Tenants whose share is zero (a cap of 0) are left out. A snapshot:
    average it over time (``avg_over_time``) for a trend. Cost: O(busy tenants) per level of
    the water-filling, at scrape time only.
    """
    demand: dict[str, float] = {}
    weight: dict[str, float] = {}
    cap: dict[str, float] = {}
    for tenant_id in running.keys() | queued.keys():
        demand[tenant_id] = float(running.get(tenant_id, 0) + queued.get(tenant_id, 0))
        info = engine.tenants.cached(tenant_id)
        if info is None:
            weight[tenant_id], cap[tenant_id] = 1.0, math.inf
        else:
            weight[tenant_id] = info.policy.weight
            cap[tenant_id] = float(info.policy.max_running_steps)
    if not demand:
        return 1.0
    shares = max_min_shares(demand, weight, cap, float(engine.dispatcher.scheduler.slots))
    ratios = [running.get(t, 0) / s for t, s in shares.items() if s > 1e-9]
    return jain_index(ratios) if ratios else 1.0
