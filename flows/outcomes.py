"""How a procedure's run ends when it does not make its change: named states a person can
read in the run list, and the paperwork published first."""

from __future__ import annotations

from prefect.states import Cancelled, Failed, State

from sevflow.incident import publish_records
from sevflow.models import GateOutcome, GateResult, IncidentContext

AWAITING_HUMAN_DECISION = "AwaitingHumanDecision"
REJECTED = "Rejected"


def gate_closed(incident: IncidentContext, result: GateResult, what: str) -> State:
    """The gate did not approve: nothing was changed. Document it and end the run."""
    last = result.answers[-1][2] if result.answers else ""
    if result.outcome is GateOutcome.REJECTED:
        publish_records(incident, "rejected", [f"{what}: rejected; nothing was changed. {last}"], [])
        return Cancelled(name=REJECTED, message=f"{what} was rejected; nothing was changed. {last}")
    publish_records(
        incident, "awaiting human decision",
        [f"{what}: no decision after the last escalation tier; nothing was changed."], [],
    )
    return Failed(
        name=AWAITING_HUMAN_DECISION,
        message=f"{what}: nobody answered through every escalation tier. Nothing was changed; "
        "the incident is documented and waits on a human decision.",
    )
