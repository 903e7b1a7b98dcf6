"""Post-Incident Follow-up (EMERGENCY-PROCEDURES.md, "Post-Incident", "Follow-Up (Within 24
Hours)"): a run scheduled by a procedure when it resolves an incident, the policy's
`follow_up_seconds` later (24 hours by default).

    1. CHECK   the post-mortem is complete (required for SEV-1 and SEV-2) and every action
               item has an owner and a due date
    2. NOTIFY  the incident commander (the policy's notification block) when it is not

It reads the incident's durable records and changes nothing in production.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from prefect import flow, get_run_logger

from sevflow.incident import FOLLOW_UP, follow_up

PROCEDURE = FOLLOW_UP


@flow(name=PROCEDURE, log_prints=False)
def post_incident_follow_up(incident_id: str, policy: str = "default") -> list[str]:
    """Check incident `incident_id`'s post-mortem is complete and every action item has an
    owner and a date; if not, notify the incident commander (policy `policy`). Returns what
    is missing."""
    missing = follow_up(incident_id, policy)
    get_run_logger().info("Post-incident follow-up of %s: %s", incident_id,
                          f"missing {'; '.join(missing)}, incident commander told" if missing else "complete")
    return missing
