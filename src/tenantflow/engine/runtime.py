"""Kept for importers of the former module: the executing core is
:mod:`tenantflow.engine.execution` (``Runtime`` is its
:class:`~tenantflow.engine.execution.driver.RunDriver`, ``Active`` its
:class:`~tenantflow.engine.execution.active.ActiveRun`)."""

from tenantflow.domain.progress import result_json
from tenantflow.engine.execution.active import ActiveRun as Active
from tenantflow.engine.execution.active import RunEvents as Hooks
from tenantflow.engine.execution.driver import RunDriver as Runtime

__all__ = ["Active", "Hooks", "Runtime", "result_json"]
