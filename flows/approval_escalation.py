"""The escalation watcher (EMERGENCY-PROCEDURES.md, "Escalation Path"): automated alerts →
self-remediation → document & wait → never change production without explicit approval.

A small scheduled flow: each pass looks at every gate that waits, tells the next tier when
the current tier's time has passed, and after the last tier answers the gate `expired`, so
the procedure ends documented, unchanged, in the state `AwaitingHumanDecision`.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from prefect import flow, get_run_logger

from sevflow.gate import escalate_waiting_gates

PROCEDURE = "approval-escalation"


@flow(name=PROCEDURE, log_prints=False)
def approval_escalation() -> dict[str, str]:
    """Escalate or expire waiting approval gates whose tier time has passed."""
    done = escalate_waiting_gates()
    get_run_logger().info("Escalation pass: %s", done or "nothing due")
    return done
