"""The workflows an engine knows, by name and version, and the runs parked on unknown versions.

A run records the workflow version it started on. A process that loads such a run before that
version is registered (after a restart, or a worker taking a tenant over) parks it here; the
registration of the version resumes it (see :meth:`tenantflow.engine.engine.Engine.register`).
"""

from __future__ import annotations

import json
from typing import Any

from tenantflow.domain.contracts import contract_for
from tenantflow.domain.records import RunRecord
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.errors import NotFoundError, SpecError
from tenantflow.workflow import Workflow

__all__ = ["WorkflowRegistry", "decode_sink"]


class WorkflowRegistry:
    """Registered workflow versions, the latest of each name, and parked runs."""

    def __init__(self, *, choreograph: bool = False) -> None:
        self.choreograph = choreograph
        """Register every spec choreographed (the hybrid placement): side-effect steps go to
        the outbox instead of being executed (see :mod:`tenantflow.domain.outbox`)."""
        self._specs: dict[tuple[str, str], WorkflowSpec] = {}
        self._latest: dict[str, WorkflowSpec] = {}
        self.parked: list[RunRecord] = []

    def register(self, workflow: Workflow | WorkflowSpec) -> WorkflowSpec:
        """Make a workflow version available.

        Raises:
            SpecError: the same name and version is registered with different steps.
        """
        spec = workflow.spec if isinstance(workflow, Workflow) else workflow
        if self.choreograph and not spec.choreograph:
            spec = spec.choreographed()
        key = (spec.name, spec.version)
        existing = self._specs.get(key)
        if existing is not None and existing.fingerprint != spec.fingerprint:
            raise SpecError(
                f"workflow {spec.name!r} version {spec.version!r} is already registered with"
                " different steps; give the new definition a new version",
                workflow=spec.name,
                version=spec.version,
            )
        self._specs[key] = spec
        latest = self._latest.get(spec.name)
        if latest is None or _version_key(spec.version) >= _version_key(latest.version):
            self._latest[spec.name] = spec
        return spec

    def spec_or_none(self, name: str, version: str) -> WorkflowSpec | None:
        """The registered version, or None."""
        return self._specs.get((name, version))

    def workflow(self, name: str, version: str | None = None) -> WorkflowSpec:
        """A registered workflow (latest version unless ``version`` is given).

        Raises:
            NotFoundError: no such workflow (version) is registered.
        """
        spec = self._latest.get(name) if version is None else self._specs.get((name, str(version)))
        if spec is None:
            known = ", ".join(sorted(self._latest)) or "none"
            raise NotFoundError(
                f"workflow {name!r}{'' if version is None else f' version {version!r}'} is not"
                f" registered (registered: {known})",
                kind="workflow",
                id=name,
            )
        return spec

    def all(self) -> list[WorkflowSpec]:
        """Every registered workflow version, by name then version."""
        return sorted(self._specs.values(), key=lambda s: (s.name, s.version))

    def park(self, record: RunRecord) -> None:
        """Hold a run whose workflow version is not registered yet."""
        self.parked.append(record)

    def take_parked(self, spec: WorkflowSpec) -> list[RunRecord]:
        """Remove and return the runs parked on ``spec``'s version."""
        mine = [
            r for r in self.parked if (r.workflow, r.workflow_version) == (spec.name, spec.version)
        ]
        self.parked = [r for r in self.parked if r not in mine]
        return mine

    def is_parked(self, run_id: str) -> bool:
        """Whether the run is parked here."""
        return any(r.id == run_id for r in self.parked)

    def drop_parked(self, tenant: str) -> None:
        """Forget the parked runs of ``tenant`` (another process drives them now)."""
        self.parked = [r for r in self.parked if r.tenant_id != tenant]

    def decode_result(self, record: RunRecord) -> Any:
        """A completed run's result as the sink step's output type."""
        if record.result_json is None:
            return None
        spec = self._specs.get((record.workflow, record.workflow_version))
        if spec is None:
            return json.loads(record.result_json)
        if len(spec.sinks) == 1:
            return decode_sink(spec, record.result_json)
        return json.loads(record.result_json)


def decode_sink(spec: WorkflowSpec, data: bytes) -> Any:
    """The output of ``spec``'s single sink step, as its result type, from its JSON."""
    sink = spec.step(spec.sinks[0])
    return contract_for(sink.result_type).load(data, step=sink.name, direction="result")


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
