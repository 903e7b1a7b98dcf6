"""The approval gate: "Never make production changes without explicit approval."

Every mutating step of every procedure is reached only through :func:`require_approval`.

How it waits. The gate *suspends* the flow run (Prefect frees the process and the worker
slot; nothing holds a worker while people think) with typed input: `decision` (approve or
reject, a required choice with no default), `approver` and `reason`. When answered, Prefect
reschedules the run and its body runs again from the top: every step before the gate is a
persisted, run-keyed task, so it is skipped, and each earlier answer is replayed from the
run's stored inputs in order (answer keys are `<gate>-answer-<n>`). The gate is therefore a
deterministic fold over its answers, and the policy's verdict on each answer is itself a
persisted step, so a policy edited while a gate waits cannot change a verdict already given.

Policy. Who may answer, and how many distinct approvers are needed, come from the approval
policy block when the gate opens. An answer from anyone else is recorded and ignored and the
gate waits again; one allowed rejection closes it.

Plans. A gate asks about one exact plan (:class:`sevflow.models.Plan`); its digest is in the
form (a prefilled field), in `sevflow pending` and in the notification, and every answer
carries the digest it was given for. An answer for another digest is recorded and ignored.
The approved plan, as stored when the gate opened, is what the procedure then carries out.

Escalation. Not built on pause timeouts (a timed-out pause fails the run). The scheduled
`approval-escalation` flow (:func:`escalate_waiting_gates`) notifies the next tier when a
tier's wait passes and, after the last, answers the gate itself through the same resume
call people use (never forcing a state, so it cannot race a person's answer), as a rejection
by `sevflow escalation`. The flow counts that as an expiry only once the escalation schedule
has really run out; the run then ends, unchanged, in the state `AwaitingHumanDecision`.

Records. Each request, answer, ignored answer and escalation is a Prefect event on the
resource `sevflow.incident.<id>` and a durable timeline record on the run.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from pydantic import Field

from sevflow.errors import ApprovalError, ConfigurationError
from sevflow import identity, links
from sevflow import markdown as md
from sevflow.models import (
    RECORD_PREFIX,
    REQUESTER_KEY,
    AnswerVerdict,
    GateAnswer,
    GateOutcome,
    GateRequest,
    GateResult,
    IncidentContext,
    Plan,
    TimelineEntry,
    gate_answer_key,
    gate_expired_key,
    gate_request_key,
    utcnow,
)
from sevflow.policy import (
    EscalationTier,
    GateRequirement,
    GateTally,
    PolicyError,
    escalation_step,
    normalise_name,
)
from sevflow.tasks import notify
from sevflow.tasks.common import step
from sevflow.tasks.orchestrator import (
    emit_incident_event,
    read_record,
    read_records,
    record_timeline,
    resolved_alerts,
    write_record,
)

EXPIRED_BY = "sevflow escalation"
_GATE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class ApprovalInput(RunInput):
    """The Resume form. `decision` has no default: the approver must choose."""

    decision: Literal["approve", "reject"] = Field(
        title="Decision",
        description="Approve to make the change above; reject to leave production as it is.",
        json_schema_extra={"enum": ["approve", "reject"]},
    )
    approver: str = Field(title="Your name", min_length=1, description="As the approval policy lists you.")
    reason: str = Field(title="Reason", min_length=1, description="Why: recorded in the timeline and post-mortem.")
    plan_digest: str = Field(
        title="Plan digest", min_length=1,
        description="The plan you are answering for (filled in; it must match the plan shown above, "
        "or the answer is recorded and ignored).",
    )
    signature: str = Field(
        default="", title="Signature",
        description="Filled in by `sevflow approve --key`; where the policy needs signed answers, an "
        "answer without one is recorded and ignored.",
    )
    signed_at: str = Field(default="", title="Signed at", description="Filled in with the signature.")
    link_id: str = Field(default="", title="Approval link",
                         description="Filled in by the approval page when answered through a one-click link.")
    link_proof: str = Field(default="", title="Approval link proof", description="Filled in by the approval page.")


request_key = gate_request_key
answer_key = gate_answer_key


def gate_of_pause_key(pause_key: str | None) -> str | None:
    if not pause_key or "-answer-" not in pause_key:
        return None
    return pause_key.rsplit("-answer-", 1)[0]


# --- steps (persisted per run, so each happens once however often the body replays) -------


@step("ask for approval", timeline=False)
def open_gate(incident: IncidentContext, gate: str, plan: Plan, policy_name: str) -> GateRequest:
    """Resolve who may approve from the policy, store the request with the run, tell the
    first escalation tier, and emit `sevflow.approval.requested`."""
    from sevflow.blocks.policy import ApprovalPolicy

    try:
        policy = ApprovalPolicy.load(policy_name)
    except ValueError as exc:
        raise ConfigurationError(
            f"No sevflow Approval Policy block named {policy_name!r}: create one (Prefect UI, Blocks) "
            "or start `sevflow up` once to create the default."
        ) from exc
    try:
        requirement = policy.requirement(plan.kind, incident.severity)
    except PolicyError as exc:
        raise ConfigurationError(str(exc)) from exc

    requester, requester_verified = _requester(incident.flow_run_id, requirement.approver_keys | _all_keys(policy))
    request = GateRequest(
        gate=gate,
        incident=incident,
        plan=plan,
        digest=plan.digest,
        approvers=requirement.approvers,
        required_approvals=requirement.required_approvals,
        tiers=[t.model_dump(mode="json") for t in requirement.tiers],
        opened_at=utcnow(),
        verified=requirement.verified,
        approver_keys=requirement.approver_keys,
        forbid_self_approval=requirement.forbid_self_approval,
        requester=requester,
        requester_verified=requester_verified,
        approval_page_url=getattr(policy, "approval_page_url", None),
        approval_link_seconds=getattr(policy, "approval_link_seconds", 3600.0),
    )
    if not write_record(incident.flow_run_id, request_key(gate), request.model_dump(mode="json")):
        stored = GateRequest.model_validate(read_record(incident.flow_run_id, request_key(gate)))
        if stored.digest != request.digest:
            # Answers stored for this gate were given for the stored plan: never count them for another.
            raise ApprovalError(
                f"Gate {gate!r} of this run already asked about plan {stored.digest[:12]}; it cannot ask about "
                f"plan {request.digest[:12]} under the same name. Nothing was changed."
            )
        return stored
    record_timeline(
        incident,
        f"{gate}-00-request",
        TimelineEntry(
            at=request.opened_at,
            source="sevflow",
            kind="approval",
            description=f"Approval requested: {plan.title} (plan {plan.digest[:12]}; needs "
            f"{requirement.required_approvals} of {', '.join(requirement.approvers)})",
            details={"gate": gate, "plan_digest": plan.digest},
        ),
    )
    emit_incident_event(
        incident,
        "sevflow.approval.requested",
        {"gate": gate, "plan": plan.model_dump(mode="json"), "plan_digest": plan.digest,
         "approvers": requirement.approvers, "required_approvals": requirement.required_approvals},
    )
    if requirement.tiers:
        _notify_tier(request, 0, escalated=False)
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key=_artifact_key(f"waiting-{gate}"), markdown=waiting_markdown(request),
        description=f"Gate {gate} waits for approval of plan {plan.digest[:12]} (since "
        f"{request.opened_at:%Y-%m-%d %H:%M:%S} UTC)",
    )
    get_run_logger().info(
        "Waiting for approval of %r (plan %s) from %s. Answer in the UI (Resume) or: "
        "sevflow approve %s --as NAME --reason TEXT",
        plan.title, plan.digest[:12], ", ".join(requirement.approvers), incident.flow_run_id,
    )
    return request


def _artifact_key(text: str) -> str:
    # Artifact keys: lowercase letters, digits and dashes only.
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def waiting_markdown(request: GateRequest) -> str:
    """What a waiting gate asks, for the run's Artifacts tab: the whole plan (its full diff
    included), who may answer, since when, and when each escalation tier is due. Pure."""
    def at(when: datetime) -> str:
        return f"{when:%Y-%m-%d %H:%M:%S} UTC"

    tiers = [EscalationTier.model_validate(t) for t in request.tiers]
    lines = [
        f"## Waiting for approval: gate `{request.gate}`",
        "",
        f"**Waiting since:** {at(request.opened_at)}  ",
        f"**Who may answer:** {md.escape(', '.join(request.approvers))} "
        f"({request.required_approvals} distinct approval{'s' if request.required_approvals != 1 else ''} needed)  ",
        f"**Answer:** the run's Resume button, or `sevflow approve {request.incident.flow_run_id} --as NAME "
        "--reason TEXT` (or `sevflow reject ...`)",
        "",
    ]
    if tiers:
        lines += ["**Escalation** (if nobody answers):", ""]
        due = request.opened_at
        for index, tier in enumerate(tiers):
            who = f" ({md.escape(', '.join(tier.notify))})" if tier.notify else ""
            lines.append(f"- {at(due)}: {'notified' if index == 0 else 'escalates to'} {md.escape(tier.name)}{who}")
            due = due + timedelta(seconds=tier.wait_seconds)
        lines += [f"- {at(due)}: expires; nothing is changed and the incident waits on a human decision", ""]
    else:
        lines += ["**Escalation:** none configured: the gate waits until someone answers.", ""]
    lines += ["---", "", request.plan.describe()]
    return "\n".join(lines)


def _all_keys(policy: Any) -> dict[str, str]:
    return dict(getattr(policy, "approver_keys", {}) or {})


def _requester(flow_run_id: str, keys: dict[str, str]) -> tuple[str, bool]:
    """Who asked for this run's changes, and whether they proved it (a signature by their key)."""
    stored = read_record(flow_run_id, REQUESTER_KEY)
    if not isinstance(stored, dict) or not stored.get("name"):
        return "unknown", False
    name = str(stored["name"])
    key = keys.get(normalise_name(name), "")
    message = identity.requester_message(run=flow_run_id, requester=name, signed_at=str(stored.get("signed_at", "")))
    return name, bool(key) and identity.verify(message, str(stored.get("signature", "")), name, key)


def verify_answer(request: GateRequest, answer: GateAnswer, used_links: list[str] | None = None) -> tuple[bool, str]:
    """Whether the answer carries a valid signature, by the approver's key, over this run, gate,
    plan and these words, made recently; or came through the approver's own approval link,
    unused before at this gate and not expired (sevflow.links). (False, why) otherwise."""
    if answer.link_id:
        if answer.link_id in (used_links or []):
            return False, "the approval link was already used (a link is good for one answer)"
        stored = read_record(request.incident.flow_run_id, links.record_key(answer.link_id))
        return links.check_answer(stored, run=request.incident.flow_run_id, gate=request.gate,
                                  plan_digest=request.digest, approver=answer.approver, proof=answer.link_proof,
                                  received_at=answer.received_at, normalise=normalise_name)
    if not answer.signature.strip():
        return False, "the answer is not signed"
    key = request.approver_keys.get(normalise_name(answer.approver))
    if not key:
        return False, f"the policy lists no key for {answer.approver!r}"
    try:
        signed_at = datetime.fromisoformat(answer.signed_at)
    except ValueError:
        return False, "the signature has no valid signing time"
    if signed_at.tzinfo is None:
        return False, "the signing time has no time zone"
    age = (answer.received_at - signed_at).total_seconds()
    if age > request.signature_max_age_seconds or age < -60:
        return False, (f"signed {age:.0f}s before it arrived; answers older than "
                       f"{request.signature_max_age_seconds:.0f}s (or from the future) are refused")
    message = identity.answer_message(run=request.incident.flow_run_id, gate=request.gate, plan=request.digest,
                                      decision=answer.decision, approver=answer.approver, reason=answer.reason,
                                      signed_at=answer.signed_at)
    if not identity.verify(message, answer.signature, answer.approver, key):
        return False, "the signature does not match this run, gate, plan and answer (another key, or a replay)"
    return True, f"signed with {answer.approver}'s key"


@step("record the answer", timeline=False)
def record_answer(request: GateRequest, n: int, answer: GateAnswer, tally: GateTally) -> tuple[AnswerVerdict, str, GateTally]:
    """Judge one answer against the policy, record it on the timeline and as an event."""
    from sevflow.policy import judge

    requirement = GateRequirement(
        kind=request.plan.kind,
        severity=request.incident.severity,
        approvers=request.approvers,
        required_approvals=request.required_approvals,
        tiers=[EscalationTier.model_validate(t) for t in request.tiers],
        verified=request.verified,
        approver_keys=request.approver_keys,
        forbid_self_approval=request.forbid_self_approval,
        requester=request.requester,
    )
    tally = tally.model_copy(deep=True)
    verification = verify_answer(request, answer, tally.used_links)
    if answer.link_id and verification[0]:
        tally.used_links.append(answer.link_id)
    verdict, sentence = judge(answer, requirement, tally, plan_digest=request.digest, opened_at=request.opened_at,
                              verification=verification)
    incident = request.incident
    record_timeline(
        incident,
        f"{request.gate}-{n:02d}-answer",
        TimelineEntry(
            at=answer.received_at,
            source="approver" if verdict is not AnswerVerdict.EXPIRED else "sevflow",
            kind="approval",
            description=sentence,
            actor=answer.approver,
            details={"gate": request.gate, "decision": answer.decision, "verdict": verdict.value,
                     "reason": answer.reason, "plan_digest": answer.plan_digest, "signed": verification[0],
                     "identity": verification[1],
                     "proof": ("link" if answer.link_id else "signature") if verification[0] else "none",
                     **({"link_id": answer.link_id} if answer.link_id else {})},
        ),
    )
    event = {
        AnswerVerdict.COUNTED: "sevflow.approval.approved",
        AnswerVerdict.REJECTED: "sevflow.approval.rejected",
        AnswerVerdict.IGNORED: "sevflow.approval.ignored",
        AnswerVerdict.EXPIRED: "sevflow.approval.expired",
    }[verdict]
    emit_incident_event(
        incident,
        event,
        {"gate": request.gate, "answer": n, "decision": answer.decision, "approver": answer.approver,
         "reason": answer.reason, "verdict": verdict.value, "sentence": sentence,
         "plan_digest": answer.plan_digest, "approved_plan_digest": request.digest},
    )
    logger = get_run_logger()
    (logger.warning if verdict is AnswerVerdict.IGNORED else logger.info)(sentence)
    return verdict, sentence, tally


# --- the gate, called from flow bodies ---------------------------------------------------


def require_approval(incident: IncidentContext, plan: Plan, *, gate: str, policy: str = "default") -> GateResult:
    """Wait until the plan is approved, rejected or expired. Returns how it ended, with the
    approved plan as stored when the gate opened (the one the answers were given for).

    Call from a flow body (the kit's `Procedure.approve` does, with a name unique in the run).
    Suspends the run (freeing its worker) until answered.
    """
    if not _GATE_NAME.match(gate):
        raise ValueError(f"gate name {gate!r}: lowercase letters, digits and dashes only")
    request = open_gate(incident, gate, plan, policy)
    tally = GateTally()
    answers: list[tuple[GateAnswer, AnswerVerdict, str]] = []
    n = 0
    while tally.outcome is None:
        n += 1
        form = ApprovalInput.with_initial_data(
            description=_form_description(request, tally, answers), plan_digest=request.digest,
        )
        given = suspend_flow_run(wait_for_input=form, key=answer_key(gate, n))
        # The escalation watcher answers through the same resume call as people, as a
        # rejection by EXPIRED_BY; the policy decides whether it is a real expiry.
        expired = given.approver == EXPIRED_BY
        answer = GateAnswer(
            decision="expired" if expired else given.decision,
            approver=given.approver,
            reason=given.reason,
            plan_digest=given.plan_digest,
            signature=given.signature,
            signed_at=given.signed_at,
            link_id=given.link_id,
            link_proof=given.link_proof,
            received_at=_answered_at(incident.flow_run_id, answer_key(gate, n)),
        )
        verdict, sentence, tally = record_answer(request, n, answer, tally)
        answers.append((answer, verdict, sentence))
    note_resolved_alert(incident, gate, request.opened_at)
    return GateResult(gate=gate, outcome=tally.outcome, approvers=tally.approvals, answers=answers,
                      plan=request.plan)


def _answered_at(flow_run_id: str, key: str) -> datetime:
    # The stored input's creation time is when the answer was given, the same on every replay.
    with get_client(sync_client=True) as client:
        found = client.filter_flow_run_input(
            flow_run_id=UUID(flow_run_id), key_prefix=f"suspended-{key}-response", limit=1, exclude_keys=set()
        )
    created = getattr(found[0], "created", None) if found else None
    return created or utcnow()


def _form_description(request: GateRequest, tally: GateTally, answers: list[tuple[GateAnswer, AnswerVerdict, str]]) -> str:
    incident = request.incident
    lines = [
        f"**Incident {md.escape(incident.incident_id)}** · {incident.severity.value} · "
        f"service {md.code(incident.service)} · procedure {md.code(incident.procedure)}",
        "",
        request.plan.describe(),
        "",
        f"**Who may answer:** {md.escape(', '.join(request.approvers))}  ",
        f"**Approvals needed:** {request.required_approvals} distinct"
        + (" · **signed answers only** (`sevflow approve RUN --as NAME --reason TEXT --key KEY`)"
           if request.verified else "") + "  ",
        f"**Requested by:** {md.escape(request.requester)} "
        f"({'signed' if request.requester_verified else 'not proven'})"
        + (" · may not approve it" if request.forbid_self_approval and request.requester != "unknown" else ""),
    ]
    resolved = [a for a in resolved_alerts(incident.flow_run_id)]
    if resolved:
        lines = [resolved_banner(resolved[-1]), "", *lines]
    if answers:
        lines += ["", "**Answers so far:**"] + [
            f"- {md.escape(a.approver)}: {md.escape(a.decision)} → {md.escape(s)}" for a, v, s in answers]
    if tally.approvals:
        lines += ["", f"**Approved so far by:** {md.escape(', '.join(tally.approvals))}"]
    return "\n".join(lines)


# --- the incident's alert resolved while a gate waits ------------------------------------


def resolved_banner(alert: TimelineEntry) -> str:
    return (f"**⚠ The incident's alert resolved** at {alert.at:%Y-%m-%d %H:%M:%S} UTC "
            f"({md.escape(alert.description)}) while this gate waited: check the service is still down "
            "before approving a change.")


def note_resolved_alert(incident: IncidentContext, gate: str, opened_at: datetime) -> TimelineEntry | None:
    """If an alert of the incident resolved since the gate opened, say so on the timeline
    (once per gate). Returns that alert, or None."""
    resolved = [a for a in resolved_alerts(incident.flow_run_id) if a.at >= opened_at]
    if not resolved:
        return None
    alert = resolved[-1]
    record_timeline(incident, f"{gate}-alert-resolved", TimelineEntry(
        at=alert.at, source="sevflow", kind="alert",
        description=f"The incident's alert resolved while gate {gate!r} waited for a decision ({alert.description})",
        details={"gate": gate},
    ))
    return alert


def _form_marked_key(gate: str) -> str:
    return f"sevflow-gate-{gate}-form-marked"


def _mark_form_resolved(run: Any, request: GateRequest) -> None:
    """Put the resolved-alert banner at the top of the waiting gate's form (once)."""
    alert = note_resolved_alert(request.incident, request.gate, request.opened_at)
    if alert is None or not write_record(run.id, _form_marked_key(request.gate), {"at": utcnow().isoformat()}):
        return
    key = f"{run.state.name.lower()}-{run.state.state_details.pause_key}-description"
    with get_client(sync_client=True) as client:
        try:
            current = client.read_flow_run_input(flow_run_id=run.id, key=key)
        except Exception:  # noqa: BLE001 - no description stored: nothing to mark
            return
        client.delete_flow_run_input(flow_run_id=run.id, key=key)
        text = json.loads(current) if current else ""
        client.create_flow_run_input(flow_run_id=run.id, key=key,
                                     value=json.dumps(f"{resolved_banner(alert)}\n\n{text}"))


# --- escalation watcher ----------------------------------------------------------------


def _logger() -> Any:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sevflow.gate")


def _notify_tier(request: GateRequest, index: int, *, escalated: bool) -> None:
    tier = EscalationTier.model_validate(request.tiers[index])
    incident = request.incident
    entry = TimelineEntry(
        at=utcnow(),
        source="sevflow",
        kind="escalation",
        description=(f"Escalated to {tier.name}" if escalated else f"Notified {tier.name}")
        + (f" ({', '.join(tier.notify)})" if tier.notify else ""),
        details={"gate": request.gate, "tier": index},
    )
    if tier.notification_block:
        # Each approver the tier names gets a message of their own with their own link (when
        # the policy names the approval page); anyone else the tier names gets the plain one.
        personal = [p for p in tier.notify if normalise_name(p) in request.approvers] \
            if request.approval_page_url else []
        messages: list[tuple[str, str, str]] = []
        unlinked = False
        for person in personal:
            try:
                link = _issue_link(request, normalise_name(person))
            except Exception as exc:  # noqa: BLE001 - no link is no reason to leave people untold
                entry.description += f"; no approval link for {person} ({type(exc).__name__}: see the worker log)"
                _logger().error("Could not make an approval link for %s: %s", person, exc)
                unlinked = True
                continue
            subject, body = notify.approval_message(request, tier.name, escalated, link=link, to=person)
            messages.append((person, subject, body))
        if unlinked or not personal or len(personal) < len(tier.notify):
            messages.append(("", *notify.approval_message(request, tier.name, escalated)))
        for person, subject, body in messages:
            try:
                notify.send(tier.notification_block, subject, body)
            except Exception as exc:  # noqa: BLE001 - a failed page must not close the gate
                # The gate stays open and is listed by `sevflow pending`; the failure is
                # recorded where the incident commander will read it. Only the exception's type
                # and an HTTP status are told: its text can hold the webhook URL and its secret.
                why = notify.failure_summary(exc)
                entry.description += f"; NOTIFICATION FAILED via {tier.notification_block}" \
                    + (f" (to {person})" if person else "") + f": {why}"
                _logger().error("Notifying %s failed: %s", tier.notification_block, why)
        linked = [person for person, _, _ in messages if person]
        if linked:
            entry.description += f"; approval links sent to {', '.join(linked)}"
    else:
        entry.description += " (no notification block configured for this tier)"
    record_timeline(incident, f"{request.gate}-escalation-{index}", entry)
    if escalated:
        emit_incident_event(
            incident, "sevflow.approval.escalated",
            {"gate": request.gate, "tier": index, "tier_name": tier.name, "notify": tier.notify},
        )


def _issue_link(request: GateRequest, approver: str) -> str:
    """A new approval link for `approver`: its record (hash and MAC only) stored on the run,
    the link itself returned for their notification and kept nowhere else."""
    record, token = links.issue(run=request.incident.flow_run_id, gate=request.gate, plan_digest=request.digest,
                                approver=approver, expires_at=links.expiry(utcnow(), request.approval_link_seconds))
    write_record(request.incident.flow_run_id, links.record_key(record.link_id), record.model_dump(mode="json"))
    assert request.approval_page_url
    return links.url(request.approval_page_url, record, token)


WaitingGate = tuple[Any, GateRequest]


def waiting_gates() -> list[WaitingGate]:
    """Every sevflow run suspended at a gate, with its stored request."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
                tags=FlowRunFilterTags(all_=["sevflow"]),
            ),
            limit=200,
        )
    found: list[WaitingGate] = []
    for run in runs:
        if run.state is None or run.state.type != StateType.PAUSED:
            continue
        gate = gate_of_pause_key(run.state.state_details.pause_key)
        if gate is None:
            continue
        stored = read_record(run.id, request_key(gate))
        if stored:
            found.append((run, GateRequest.model_validate(stored)))
    return found


@task(name="escalate a waiting gate", cache_policy=NO_CACHE)
def escalate_gate(flow_run_id: str, request: GateRequest, now: datetime) -> str | None:
    """Notify the next tier if its time has come, or expire the gate after the last."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
    if run.state is None or run.state.type != StateType.PAUSED:
        return None  # answered meanwhile
    tiers = [EscalationTier.model_validate(t) for t in request.tiers]
    records = read_records(run.id, f"{RECORD_PREFIX}{request.gate}-escalation-")
    # Tier 0 was told when the gate opened; each tier told leaves one record.
    due = escalation_step(tiers, request.opened_at, now, len(records))
    if due is None:
        return None
    if due < len(tiers):
        _notify_tier(request, due, escalated=True)
        return f"escalated to tier {due}"
    return _expire(run, request)


def post_answer(client: Any, run: Any, run_input: dict[str, Any], wait_seconds: float = 30.0) -> dict[str, Any]:
    """Resume `run` with `run_input` once its form is stored; returns the server's verdict body.

    Prefect marks a run Paused before it stores the form's schema (`suspend_flow_run` proposes
    the state, then saves the schema), and refuses a resume in between with "Run input schema
    not found". CI met that moment under load: an answer given then waits (up to
    `wait_seconds`) for the form instead of being refused or, for a one-use link, used up.
    """
    keyset = (run.state.state_details.run_input_keyset or {}) if run.state else {}
    schema_key = keyset.get("schema")
    deadline = time.monotonic() + wait_seconds
    while schema_key:
        try:
            client.read_flow_run_input(run.id, schema_key)
            break
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404 or time.monotonic() >= deadline:
                break
        time.sleep(0.1)
    response = client.request("POST", "/flow_runs/{id}/resume", path_params={"id": str(run.id)},
                              json={"run_input": run_input})
    return response.json()


def _expire(run: Any, request: GateRequest) -> str | None:
    """Answer the gate `expired` through the same resume call people use.

    Never forces a state: the server resumes only a run that is still paused, so a person's
    answer given a moment earlier wins and this one is refused. The flow itself accepts the
    expiry only if the escalation schedule has really run out (see `policy.judge`).
    """
    waited = (utcnow() - request.opened_at).total_seconds()
    reason = (f"No decision after {len(request.tiers)} escalation tier(s) and {waited:.0f}s: "
              "documented and waiting on a human decision.")
    with get_client(sync_client=True) as client:
        body = post_answer(client, run, {"decision": "reject", "approver": EXPIRED_BY, "reason": reason,
                                         "plan_digest": request.digest})
    status = body.get("status")
    if status != "ACCEPT":
        # Answered (or resumed) meanwhile: that answer stands.
        return None
    write_record(run.id, gate_expired_key(request.gate), {"at": utcnow().isoformat()})
    return "expired"


def due_escalations(now: datetime | None = None) -> list[str]:
    """What the watcher would do now, read only: `<run id>:<gate>:<step>` for each waiting gate
    whose next tier (or expiry, step = number of tiers) is due. Empty when nothing is due, which
    is almost always: the workers check this often and start an escalation run only when not."""
    now = now or utcnow()
    due: list[str] = []
    for run, request in waiting_gates():
        tiers = [EscalationTier.model_validate(t) for t in request.tiers]
        told = len(read_records(run.id, f"{RECORD_PREFIX}{request.gate}-escalation-"))
        step = escalation_step(tiers, request.opened_at, now, told)
        if step is not None:
            due.append(f"{run.id}:{request.gate}:{step}")
        if read_record(run.id, _form_marked_key(request.gate)) is None and any(
                a.at >= request.opened_at for a in resolved_alerts(request.incident.flow_run_id)):
            due.append(f"{run.id}:{request.gate}:alert-resolved")  # the form's banner is due
    return sorted(due)


def escalate_waiting_gates(now: datetime | None = None) -> dict[str, str]:
    """One pass of the watcher over every waiting gate. Returns what it did, by run id."""
    now = now or utcnow()
    done: dict[str, str] = {}
    for run, request in waiting_gates():
        _mark_form_resolved(run, request)
        outcome = escalate_gate(str(run.id), request, now)
        if outcome:
            done[str(run.id)] = outcome
    return done


# --- answering, for the CLI --------------------------------------------------------------


class AnswerRefused(ApprovalError):
    """The server or the policy refused the answer."""


def answer_gate(flow_run_id: str, decision: Literal["approve", "reject"], approver: str, reason: str,
                wait_seconds: float = 120.0, key: str | None = None, ref: str | None = None) -> str:
    """Resume the run with an answer and wait for the gate's verdict on it.

    `ref` answers a gate that asks for one (the hotfix to deploy). `wait_seconds` bounds the
    wait for the verdict (the command line passes its `--wait`, 15 s); judging an answer means
    a worker starting the run again and replaying it up to the gate, which on a busy host
    (measured: 10 to 20 s at a load of 17 on 2 cores) takes longer than a person would wait at
    a prompt, so callers that must know the verdict, as the tests do, wait as long as it takes.

    Raises AnswerRefused with the server's reason when the resume is refused (Prefect
    answers HTTP 200 with status REJECT/ABORT), or with the policy's sentence when the run
    recorded the answer as ignored.
    """
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(flow_run_id))
        except Exception as exc:
            raise AnswerRefused(f"No flow run {flow_run_id}: {exc}") from exc
        if run.state is None or run.state.type != StateType.PAUSED:
            raise AnswerRefused(
                f"Run {flow_run_id} is not waiting at a gate (state: {run.state.name if run.state else 'none'})."
            )
        gate = gate_of_pause_key(run.state.state_details.pause_key)
        stored = read_record(flow_run_id, request_key(gate)) if gate else None
        digest = GateRequest.model_validate(stored).digest if stored else ""
        run_input = {"decision": decision, "approver": approver, "reason": reason, "plan_digest": digest,
                     **({"ref": ref} if ref else {})}
        if key and gate:
            signed_at = utcnow().isoformat()
            message = identity.answer_message(run=str(run.id), gate=gate, plan=digest, decision=decision,
                                              approver=approver, reason=reason, signed_at=signed_at)
            run_input |= {"signature": identity.sign(message, Path(key)), "signed_at": signed_at}
        body = post_answer(client, run, run_input)
    if body.get("status") != "ACCEPT":
        details = body.get("details") or {}
        raise AnswerRefused(f"The server refused the answer ({body.get('status')}): {details.get('reason', details)}")
    if gate is None:
        return "accepted"
    n = int(run.state.state_details.pause_key.rsplit("-", 1)[1])
    deadline = time.monotonic() + wait_seconds
    key = f"{RECORD_PREFIX}{gate}-{n:02d}-answer"
    while time.monotonic() < deadline:
        stored = read_record(flow_run_id, key)
        if stored:
            entry = TimelineEntry.model_validate(stored)
            if entry.details.get("verdict") == AnswerVerdict.IGNORED.value:
                raise AnswerRefused(entry.description)
            return entry.description
        time.sleep(0.25)
    return "answer delivered; the run has not judged it yet (is a worker running? see `sevflow pending`)"




# --- asking for a value: the hotfix ref ---------------------------------------------------


class RefInput(RunInput):
    """The form that asks which ref to deploy as a hotfix. Naming a ref changes nothing: a
    plan is made from it and asked about at the next gate."""

    decision: Literal["approve", "reject"] = Field(
        title="Decision", description="Approve and name the ref to deploy; reject to leave production as it is.",
        json_schema_extra={"enum": ["approve", "reject"]},
    )
    ref: str = Field(default="", title="Ref to deploy",
                     description="Commit, tag or branch holding the fix (needed to approve).")
    approver: str = Field(title="Your name", min_length=1, description="As the approval policy lists you.")
    reason: str = Field(title="Reason", min_length=1, description="Why: recorded in the timeline and post-mortem.")
    plan_digest: str = Field(default="", title="Plan digest", description="Not used here: no plan exists yet.")


@step("who may answer", timeline=False)
def who_may_answer(policy_name: str, kind: str, incident: IncidentContext) -> list[str]:
    """The approvers the policy lists for changes of `kind` at the incident's severity."""
    from sevflow.blocks.policy import ApprovalPolicy

    try:
        return ApprovalPolicy.load(policy_name).requirement(kind, incident.severity).approvers
    except (ValueError, PolicyError) as exc:
        raise ConfigurationError(f"Approval policy {policy_name!r}: {exc}") from exc


@step("record the answer", timeline=False)
def record_ref_answer(incident: IncidentContext, gate: str, n: int, answer: GateAnswer, ref: str,
                      approvers: list[str]) -> tuple[AnswerVerdict, str]:
    """Judge an answer to the ref question: someone the policy lists, approving with a ref,
    or rejecting. Anything else is recorded and ignored, and the question is asked again."""
    from sevflow.policy import normalise_name

    who = normalise_name(answer.approver)
    if who not in approvers:
        verdict, sentence = AnswerVerdict.IGNORED, f"{answer.approver!r} may not answer this: recorded and ignored."
    elif answer.decision == "reject":
        verdict, sentence = AnswerVerdict.REJECTED, f"Rejected by {answer.approver}: {answer.reason}"
    elif not ref.strip():
        verdict, sentence = AnswerVerdict.IGNORED, f"{answer.approver} approved without naming a ref: asked again."
    else:
        verdict, sentence = AnswerVerdict.COUNTED, f"{answer.approver} named {ref.strip()!r} as the hotfix to deploy."
    record_timeline(incident, f"{gate}-{n:02d}-answer", TimelineEntry(
        at=answer.received_at, source="approver", kind="approval", description=sentence, actor=answer.approver,
        details={"gate": gate, "decision": answer.decision, "verdict": verdict.value, "ref": ref,
                 "reason": answer.reason}))
    emit_incident_event(incident, "sevflow.approval.answered", {"gate": gate, "answer": n, "ref": ref,
                                                               "verdict": verdict.value, "sentence": sentence})
    return verdict, sentence


def ask_for_ref(incident: IncidentContext, *, gate: str, policy: str, kind: str, question: str) -> tuple[GateResult, str]:
    """Suspend until someone the policy allows names a ref (or rejects). Returns how it ended
    and the ref. Like a gate, it holds no worker while it waits, and replays its answers."""
    if not _GATE_NAME.match(gate):
        raise ValueError(f"gate name {gate!r}: lowercase letters, digits and dashes only")
    approvers = who_may_answer(policy, kind, incident)
    record_timeline(incident, f"{gate}-00-request", TimelineEntry(
        at=utcnow(), source="sevflow", kind="approval", description=f"Asked for a decision: {question}",
        details={"gate": gate}))
    answers: list[tuple[GateAnswer, AnswerVerdict, str]] = []
    n = 0
    while True:
        n += 1
        lines = [f"**Incident {md.escape(incident.incident_id)}** · {incident.severity.value} · "
                 f"service {md.code(incident.service)}", "", question, "",
                 f"**Who may answer:** {md.escape(', '.join(approvers))}"]
        resolved = resolved_alerts(incident.flow_run_id)
        if resolved:
            lines = [resolved_banner(resolved[-1]), "", *lines]
        lines += [f"- {md.escape(a.approver)}: {md.escape(s)}" for a, _, s in answers]
        given = suspend_flow_run(wait_for_input=RefInput.with_initial_data(description="\n".join(lines)),
                                 key=answer_key(gate, n))
        answer = GateAnswer(decision=given.decision, approver=given.approver, reason=given.reason,
                            received_at=_answered_at(incident.flow_run_id, answer_key(gate, n)))
        verdict, sentence = record_ref_answer(incident, gate, n, answer, given.ref, approvers)
        answers.append((answer, verdict, sentence))
        if verdict is AnswerVerdict.REJECTED:
            return GateResult(gate=gate, outcome=GateOutcome.REJECTED, answers=answers), ""
        if verdict is AnswerVerdict.COUNTED:
            asked = read_record(incident.flow_run_id, f"{RECORD_PREFIX}{gate}-00-request")
            note_resolved_alert(incident, gate, TimelineEntry.model_validate(asked).at if asked else incident.opened_at)
            return GateResult(gate=gate, outcome=GateOutcome.APPROVED, approvers=[answer.approver],
                              answers=answers), given.ref.strip()
