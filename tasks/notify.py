"""Telling people: approvers when a gate opens and at each escalation.

Through Prefect notification blocks (a custom webhook, Slack, PagerDuty, email...), named in
the approval policy's escalation tiers as `block-type-slug/name`. Their secrets stay in the
blocks; sevflow only hands them a subject and a body.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect.blocks.abstract import NotificationBlock
from prefect.logging import get_logger

from sevflow.errors import ConfigurationError
from sevflow.models import GateRequest
from sevflow.tasks.common import step

log = get_logger("sevflow.notify")


def approval_message(request: GateRequest, tier_name: str, escalated: bool, link: str | None = None,
                     to: str | None = None) -> tuple[str, str]:
    """Subject and body of an approval request: what, where, who may answer, how; with `link`,
    the one-click approval link of the approver `to` (theirs alone: not to be forwarded)."""
    incident = request.incident
    run = incident.flow_run_id
    verb = "ESCALATED: approval still needed" if escalated else "Approval needed"
    subject = (
        f"[{incident.severity.value}] {verb}: {request.plan.title} "
        f"({incident.service}, incident {incident.incident_id})"
    )
    lines = [
        subject,
        "",
        f"Tier: {tier_name}",
        f"Procedure: {incident.procedure}",
        f"Change: {request.plan.title}",
        f"Plan digest: {request.digest}",
        f"Where: {request.plan.target}",
        "What will run:",
        *[f"  {line}" for line in request.plan.command_lines()],
        f"Undo: {request.plan.undo}",
        f"Who may answer: {', '.join(request.approvers)} "
        f"({request.required_approvals} distinct approval(s) needed)",
        "",
        f"Open the run: {incident.run_url or f'flow run {run}'}",
        f"Approve: sevflow approve {run} --as NAME --reason TEXT",
        f"Reject:  sevflow reject {run} --as NAME --reason TEXT",
    ]
    if link:
        lines[1:1] = [f"For {to}: your own approval link (one answer, expires in "
                      f"{request.approval_link_seconds / 60:.0f} min; do not forward it):", link, ""]
    return subject, "\n".join(lines)


def failure_summary(exc: BaseException) -> str:
    """What went wrong sending, without the exception's text: notification libraries put the
    URL (and the token in it) into their messages."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return type(exc).__name__ + (f" (HTTP {status})" if status else "")


def send(block_slug: str, subject: str, body: str) -> None:
    """Send through the notification block `block-type-slug/name`."""
    try:
        block = Block.load(block_slug)
    except ValueError as exc:
        raise ConfigurationError(
            f"Notification block {block_slug!r} not found: create it in the Prefect UI "
            "(Blocks) or fix the name in the sevflow Approval Policy's escalation tiers."
        ) from exc
    if not isinstance(block, NotificationBlock):
        raise ConfigurationError(f"Block {block_slug!r} is not a notification block.")
    # Secret values live in the block; the logged line names only the block.
    log.info("Notifying %s: %s", block_slug, subject)
    block.notify(body=body, subject=subject)


@step("NOTIFY: alert humans")
def alert_humans(incident_id: str, blocks: list[str], subject: str, body: str) -> list[str]:
    """Send `subject` and `body` through each notification block at once. Returns the blocks
    told. With none configured it says so loudly (the run's log and the timeline) and sends nothing."""
    if not blocks:
        log.warning("Incident %s: no notification block is configured for this alert; nobody was told. "
                    "Set `notify` on the target block.", incident_id)
        return []
    for block in blocks:
        send(block, subject, body)
    return list(blocks)




@step("COMMUNICATE", mutating=True)
def communicate(block_slug: str | None, subject: str, body: str) -> bool:
    """Tell the affected people through the notification block `block_slug` (none: logged only).
    Returns whether a notification was sent."""
    if not block_slug:
        log.warning("No notification block configured; not sent: %s", subject)
        return False
    send(block_slug, subject, body)
    return True
