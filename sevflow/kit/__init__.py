"""The kit for writing procedures: everything a procedure module imports comes from here.

    from sevflow.kit import Procedure, begin, run, step, NothingToDo, Severity, ...

A procedure module in `flows/` is one `@flow` whose body reads like its runbook section:
gather facts (read-only steps) → decide (pure code in `sevflow.plans`) → `ctx.approve(plan)`
→ act, taking inputs from the approved plan → verify → publish the paperwork.
"""

from sevflow.incident import open_incident, publish_records
from sevflow.kit.parameters import SHARED_PARAMETERS, procedure_parameters
from sevflow.kit.preconditions import check_preconditions
from sevflow.kit.preflight import PREFLIGHT_FAILED, PreflightFailed, preflight
from sevflow.kit.procedure import (
    AWAITING_HUMAN_DECISION,
    DRY_RUN,
    NOTHING_TO_DO,
    PLAN_DRIFTED,
    REJECTED,
    DryRunEnd,
    GateClosed,
    NothingToDo,
    PlanKeptDrifting,
    Procedure,
    ProcedureEnd,
    begin,
    run,
)
from sevflow.models import IncidentContext, Plan, Severity
from sevflow.tasks.common import step
from sevflow.tasks.targets import read_service_target

__all__ = [
    "AWAITING_HUMAN_DECISION", "DRY_RUN", "NOTHING_TO_DO", "PLAN_DRIFTED", "PREFLIGHT_FAILED", "REJECTED",
    "PreflightFailed", "preflight",
    "DryRunEnd", "GateClosed", "IncidentContext", "NothingToDo", "Plan", "PlanKeptDrifting", "Procedure",
    "ProcedureEnd", "Severity", "begin", "check_preconditions", "open_incident", "publish_records",
    "read_service_target", "run", "step", "SHARED_PARAMETERS", "procedure_parameters",
]
