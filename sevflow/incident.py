"""The incident a run works on: opening it (id, tags, first timeline line) and closing it
with its paperwork (timeline table, post-mortem, checklists) published as run artifacts.

The timeline is built from what Prefect recorded for the run: its durable sevflow records
(approval requests, answers, escalations), its task runs (each runbook step, when it ended,
how) and its state changes (suspended at a gate, resumed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.context import get_run_context

from sevflow import records
from sevflow.models import SEVERITY_FLOOR_KEY, IncidentContext, Severity, TimelineEntry, utcnow
from sevflow.policy import effective_severity
from sevflow.tasks.common import step
from sevflow.tasks.orchestrator import (
    add_run_tags,
    RECORD_PREFIX,
    emit_incident_event,
    read_records,
    record_timeline,
    run_url,
    timeline_records,
    write_record,
)

def incident_id_for(flow_run_id: str, started: datetime) -> str:
    return f"inc-{started:%Y%m%d}-{flow_run_id[:8]}"


def _context_floor(run: Any) -> tuple[Severity, str] | None:
    """The floor set in a run's context when it was created (the intake: the alert's severity)."""
    floor = (getattr(run, "context", None) or {}).get(SEVERITY_FLOOR_KEY)
    if not isinstance(floor, dict):
        return None
    try:
        return Severity.parse(floor.get("severity", "")), str(floor.get("why") or "an alert's severity")
    except ValueError:
        return None


def severity_floors(flow_run: Any, service: str, policy: str | None, incident_id: str | None
                    ) -> list[tuple[Severity, str]]:
    """Every severity this run may not go below, with why: the service's floor in the policy
    that judges it, the alert that started it, and the alerts that started its incident's
    other runs (a follow-up run on an incident cannot lower it)."""
    from sevflow.blocks import ApprovalPolicy

    floors: list[tuple[Severity, str]] = []
    if policy:
        try:
            minimum = ApprovalPolicy.load(policy).minimum_severity_for(service)
        except ValueError:
            minimum = None  # no such policy: the gate says so, in its words, before any change
        if minimum is not None:
            floors.append((minimum, f"approval policy {policy!r} sets {minimum.value} as the minimum for {service}"))
    own = _context_floor(flow_run)
    if own is not None:
        floors.append(own)
    if incident_id:
        for other in incident_runs(incident_id):
            if str(other.id) != str(flow_run.id) and (found := _context_floor(other)) is not None:
                floors.append(found)
    return floors


@step("open the incident", timeline=False)
def open_incident(procedure: str, service: str, severity: Severity, incident_id: str | None, reason: str,
                  policy: str | None = None) -> IncidentContext:
    """Name the incident, tag the run `incident:<id>`, `sev:<n>`, `service:<name>`, and
    write the timeline's first line and the `sevflow.incident.opened` event.

    The incident's severity is the run's `severity` raised to its floors (`severity_floors`):
    a requester may raise severity, never lower it below what the alert or the policy says."""
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(get_run_context().task_run.flow_run_id)  # type: ignore[union-attr]
    started = flow_run.start_time or flow_run.expected_start_time or utcnow()
    requested = severity
    severity, raised_because = effective_severity(requested, severity_floors(flow_run, service, policy, incident_id))
    incident = IncidentContext(
        incident_id=incident_id or incident_id_for(str(flow_run.id), started),
        procedure=procedure,
        service=service,
        severity=severity,
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        run_url=run_url(flow_run.id),
        opened_at=started,
        reason=reason,
    )
    add_run_tags(flow_run.id, incident.tags)
    record_timeline(
        incident,
        "000-opened",
        TimelineEntry(
            at=started,
            source="sevflow",
            kind="note",
            description=f"{procedure} started for {service} at {severity.value}"
            + (f": {reason}" if reason else ""),
            details={"milestone": "Investigation started"},
        ),
    )
    if raised_because is not None:
        raised = f"severity raised from {requested.value} to {severity.value}: {raised_because}"
        record_timeline(incident, "001-severity-raised",
                        TimelineEntry(at=started, source="sevflow", kind="note", description=raised,
                                      details={"requested": requested.value, "severity": severity.value}))
        get_run_logger().warning("%s", raised)
    emit_incident_event(incident, "sevflow.incident.opened", {"procedure": procedure, "reason": reason})
    get_run_logger().info("Incident %s (%s, %s). Run: %s", incident.incident_id, service,
                          severity.value, incident.run_url or incident.flow_run_id)
    return incident


def run_timeline(incident: IncidentContext) -> list[TimelineEntry]:
    """The run's timeline from Prefect's records, oldest first: the durable sevflow records
    (incident opened, each step's end, approval requests, answers, escalations) and the
    run's state changes (suspended at a gate, resumed)."""
    return _timeline_of_run(incident.flow_run_id)


def _timeline_of_run(flow_run_id: str) -> list[TimelineEntry]:
    entries = list(timeline_records(flow_run_id))
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(UUID(flow_run_id))
    for st in states:
        if st.name in {"Suspended", "Resuming"}:
            entries.append(TimelineEntry(
                at=st.timestamp, source="prefect", kind="state",
                description="Run suspended at an approval gate (no worker held)" if st.name == "Suspended"
                else "Run resumed after an answer",
            ))
    return sorted(entries, key=lambda e: e.at)


@step("publish timeline and post-mortem", timeline=False)
def publish_records(
    incident: IncidentContext,
    outcome: str,
    resolution: list[str],
    proven: list[str],
    impact: str | None = None,
    root_cause_candidates: list[str] | None = None,
    health_before: str | None = None,
    health_after: str | None = None,
    first_alert_at: datetime | None = None,
    root_cause: str | None = None,
    sections: dict[str, str] | None = None,
) -> str:
    """Publish the run's timeline (table), post-mortem (markdown, the runbook's template) and
    post-incident checklists as artifacts on the run. Returns the post-mortem markdown.

    `impact` only when known (the run's `reason` is why it was started, not the impact);
    `root_cause_candidates` are what the run's facts point at, for a person to confirm;
    `first_alert_at`, when known, starts the incident's duration and response time."""
    ended = utcnow()
    timeline = run_timeline(incident)
    end = TimelineEntry(at=ended, source="sevflow", kind="note", description=f"Procedure ended: {outcome}",
                        details={"milestone": "Resolved"} if outcome == "resolved" else {})
    # Durable too: the incident's timeline across runs (and after events expire) shows it.
    record_timeline(incident, "zz-ended", end)
    timeline.append(end)
    if outcome == "resolved":
        scheduled = schedule_follow_up(incident, ended)
        record_timeline(incident, "zz-follow-up", scheduled)
        timeline.append(scheduled)
    facts = records.PostmortemFacts(
        incident_id=incident.incident_id,
        procedure=incident.procedure,
        service=incident.service,
        severity=incident.severity,
        started_at=incident.opened_at,
        ended_at=ended,
        outcome=outcome,
        impact=impact,
        first_alert_at=first_alert_at,
        root_cause=root_cause,
        timeline=timeline,
        resolution=resolution,
        run_url=incident.run_url,
        # The first answer that decided something: an ignored answer is no response.
        response_at=next((e.at for e in timeline if e.kind == "approval" and e.source == "approver"
                          and e.details.get("verdict") in ("counted", "rejected")), None),
        root_cause_candidates=root_cause_candidates or [],
        health_before=health_before,
        health_after=health_after,
        sections=sections or {},
    )
    key = artifact_key(incident.incident_id)
    create_table_artifact(
        key=f"{key}-timeline", table=records.timeline_table(timeline),
        description=f"Timeline of incident {incident.incident_id} ({incident.procedure})",
    )
    postmortem = records.render_postmortem(facts)
    create_markdown_artifact(key=f"{key}-postmortem", markdown=postmortem,
                             description=f"Post-mortem of incident {incident.incident_id}")
    create_markdown_artifact(key=f"{key}-checklists",
                             markdown=records.render_checklists(facts, set(proven), artifact=f"{key}-postmortem"),
                             description=f"Post-incident checklists of incident {incident.incident_id}")
    # The incident's own artifact grows with it: every run of the incident re-publishes it as it
    # ends (this run still reads as running to the API: its outcome and end are passed along).
    publish_incident_record(incident.incident_id, ending=Ending(run=incident.flow_run_id, outcome=outcome, at=ended))
    emit_incident_event(incident, "sevflow.incident.documented", {"outcome": outcome})
    return postmortem


def incident_runs(incident_id: str) -> list[Any]:
    """Every flow run tagged `incident:<id>`, oldest first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"incident:{incident_id}"])),
            sort=FlowRunSort.START_TIME_ASC, limit=200,
        )


def incident_timeline(incident_id: str) -> list[TimelineEntry]:
    """One timeline across every run of the incident (its procedures, composed procedures,
    follow-ups, runs started by later alerts), from their durable records and states; each
    entry once, oldest first, in UTC. Read from run inputs, so it outlives Prefect's events."""
    seen: set[tuple[str, str, str]] = set()
    merged: list[TimelineEntry] = []
    for run in incident_runs(incident_id):
        for entry in _timeline_of_run(str(run.id)):
            key = (entry.at.isoformat(), entry.kind, entry.description)
            if key in seen:
                continue
            seen.add(key)
            entry.details.setdefault("run", str(run.id))
            entry.details.setdefault("run_name", run.name)
            entry.details.setdefault("run_url", run_url(run.id) or "")
            merged.append(entry)
    return sorted(merged, key=lambda e: e.at)


EDIT_PREFIX = "sevflow-postmortem-edit-"
FOLLOW_UP = "post-incident-follow-up"
FOLLOW_UP_TAG = "sevflow-follow-up"


def _procedure_runs(runs: list[Any]) -> list[Any]:
    """The runs that worked the incident (not its follow-ups), or all of them if none."""
    return [r for r in runs if FOLLOW_UP_TAG not in r.tags] or runs


@dataclass(frozen=True)
class Ending:
    """A run of the incident that is ending now (its final state is not written yet)."""
    run: str
    outcome: str
    at: datetime


def _run_outcome(run: Any, ending: Ending | None) -> str:
    if ending is not None and str(run.id) == ending.run:
        return ending.outcome
    return "resolved" if run.state and run.state.is_completed() and run.state.name == "Completed" else (
        run.state.name if run.state else "unknown")


def _resolution_line(run: Any, ending: Ending | None) -> str:
    if ending is not None and str(run.id) == ending.run:
        return f"{run.name}: {ending.outcome}"
    return f"{run.name}: {run.state.name if run.state else '?'}" + (
        f" — {run.state.message}" if run.state and run.state.message else "")


def _incident_facts(incident_id: str, runs: list[Any], ending: Ending | None = None) -> records.PostmortemFacts:
    entries = incident_timeline(incident_id)
    runs = _procedure_runs(runs)
    tags = {k: v for k, _, v in (t.partition(":") for t in runs[0].tags)}
    starts = [r.start_time or r.expected_start_time for r in runs if r.start_time or r.expected_start_time]
    ends = [r.end_time for r in runs if r.end_time] + ([ending.at] if ending else [])
    outcome = _run_outcome(runs[-1], ending)
    facts = records.PostmortemFacts(
        incident_id=incident_id, procedure=", ".join(dict.fromkeys(_flow_names(runs))),
        service=tags.get("service", "?"), severity=Severity.parse(tags.get("sev", "4")),
        started_at=min(starts) if starts else utcnow(), ended_at=max(ends) if ends else utcnow(), outcome=outcome,
        first_alert_at=next((e.at for e in entries if e.kind == "alert"), None),
        timeline=entries,
        resolution=[_resolution_line(r, ending) for r in runs],
        response_at=next((e.at for e in entries if e.kind == "approval" and e.source == "approver"
                          and e.details.get("verdict") in ("counted", "rejected")), None),
    )
    return records.apply_edit(facts, read_postmortem_edit(runs))


def _flow_names(runs: list[Any]) -> list[str]:
    """The procedure (flow) each run ran, in order: what the post-mortem names, not the run's
    generated name."""
    names: dict[Any, str] = {}
    with get_client(sync_client=True) as client:
        for run in runs:
            if run.flow_id not in names:
                names[run.flow_id] = client.read_flow(run.flow_id).name
    return [names[run.flow_id] for run in runs]


def _runs_of(incident_id: str) -> list[Any]:
    runs = incident_runs(incident_id)
    if not runs:
        raise LookupError(f"No runs of incident {incident_id!r}: `sevflow incidents` lists them.")
    return runs


def incident_postmortem(incident_id: str, ending: Ending | None = None) -> str:
    """The post-mortem of the whole incident, rendered from every run's durable records and the
    incident commander's parts, followed by the checklists with their evidence. `ending`: a run
    of the incident ending now, whose final state the API does not show yet."""
    runs = _runs_of(incident_id)
    facts = _incident_facts(incident_id, runs, ending)
    return (records.render_postmortem(facts) + "\n"
            + records.render_checklists(facts, now=utcnow(), artifact=incident_artifact_key(incident_id)))


def read_postmortem_edit(runs: list[Any]) -> records.PostmortemEdit | None:
    """The incident commander's latest post-mortem parts, stored on the incident's first run."""
    stored = read_records(_procedure_runs(runs)[0].id, EDIT_PREFIX)
    if not stored:
        return None
    return records.PostmortemEdit.model_validate(stored[max(stored)])


def edit_postmortem(incident_id: str, by: str, root_cause: str | None = None, impact: str | None = None,
                    prevention: str | None = None, action_items: list[str] | None = None) -> records.PostmortemEdit:
    """Store the incident commander's parts of the post-mortem with the incident (a run input
    record on its first run: it lives as long as the run, past Prefect's events), note it on
    the timeline, and re-publish the incident's post-mortem artifact. A part left None keeps
    what an earlier edit said. Bad input raises ValueError/LookupError before anything is stored."""
    if not by.strip():
        raise ValueError("say who you are with --as NAME: the post-mortem records who wrote it")
    items = [records.ActionItem.parse(text) for text in action_items] if action_items is not None else None
    runs = _runs_of(incident_id)
    before = read_postmortem_edit(runs)
    at = utcnow()
    edit = records.PostmortemEdit(
        by=by.strip(), at=at,
        root_cause=root_cause if root_cause is not None else (before.root_cause if before else ""),
        impact=impact if impact is not None else (before.impact if before else ""),
        prevention=prevention if prevention is not None else (before.prevention if before else ""),
        action_items=items if items is not None else (before.action_items if before else []),
    )
    stamp = f"{at:%Y%m%d-%H%M%S-%f}"  # run input keys: lowercase letters, digits, dashes
    first = _procedure_runs(runs)[0]
    write_record(first.id, f"{EDIT_PREFIX}{stamp}", edit.model_dump(mode="json"))
    missing = edit.missing()
    write_record(first.id, f"{RECORD_PREFIX}postmortem-edit-{stamp}", TimelineEntry(
        at=at, source="sevflow", kind="note", actor=edit.by,
        description=f"Post-mortem edited by {edit.by}" + (f"; still missing: {', '.join(missing)}" if missing else
                                                           "; complete"),
    ).model_dump(mode="json"))
    publish_incident_record(incident_id)
    return edit


def incident_artifact_key(incident_id: str) -> str:
    """The key of the incident's own post-mortem artifact (all its runs)."""
    return f"{artifact_key(incident_id)}-incident-postmortem"


def publish_incident_record(incident_id: str, ending: Ending | None = None) -> str:
    """(Re-)publish the incident's post-mortem (with its checklists) as the markdown artifact
    keyed by incident: each run of the incident as it ends, the follow-up, an edit. Returns the
    markdown."""
    text = incident_postmortem(incident_id, ending)
    # Not `<incident>-postmortem`: each run's own post-mortem has that key, and the latest run's
    # would hide the incident's.
    create_markdown_artifact(key=incident_artifact_key(incident_id), markdown=text,
                             description=f"Post-mortem of incident {incident_id} (all its runs)")
    return text


def artifact_key(incident_id: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in incident_id.lower()).strip("-")
    return cleaned or "incident"


# --- Post-Incident Follow-up -----------------------------------------------------------------


def schedule_follow_up(incident: IncidentContext, resolved_at: datetime) -> TimelineEntry:
    """Schedule the Post-Incident Follow-up run for the policy's delay after resolution (24 h by
    default), tagged with the incident. Returns the timeline entry that says so (or, loudly,
    why no follow-up could be scheduled: the procedure's fix stands either way)."""
    from datetime import timedelta

    from prefect.exceptions import ObjectNotFound
    from prefect.states import Scheduled

    from sevflow.blocks.policy import ApprovalPolicy
    from sevflow.deployments import deployment_path, run_queue

    try:
        delay = ApprovalPolicy.load(incident.policy).follow_up_seconds
    except ValueError:
        delay = 24 * 3600.0  # no such policy block: the runbook's 24 hours
    due = resolved_at + timedelta(seconds=delay)
    path = deployment_path(FOLLOW_UP)
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(path)
        except ObjectNotFound:
            get_run_logger().error("No deployment %s: the post-incident follow-up of %s is NOT scheduled; run "
                                   "`sevflow serve` (or `sevflow deploy`) so it exists.", path, incident.incident_id)
            return TimelineEntry(at=utcnow(), source="sevflow", kind="note",
                                 description=f"Post-incident follow-up NOT scheduled: no deployment {path}")
        run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"incident_id": incident.incident_id, "policy": incident.policy},
            state=Scheduled(scheduled_time=due),
            tags=[*incident.tags, FOLLOW_UP_TAG],
            # Once per resolving run, however often its last step is replayed.
            idempotency_key=f"{FOLLOW_UP}-{incident.flow_run_id}",
            work_queue_name=run_queue(deployment.work_pool_name, incident.severity),
        )
    return TimelineEntry(at=utcnow(), source="sevflow", kind="note",
                         description=f"Post-incident follow-up scheduled for {due:%Y-%m-%d %H:%M:%S} UTC",
                         details={"follow_up_run": str(run.id)})


def follow_up(incident_id: str, policy: str) -> list[str]:
    """The follow-up's check, run inside its flow: is the post-mortem complete and does every
    action item have an owner and a date? If not, tell the incident commander. Records the
    result on the follow-up run's timeline; returns what is missing."""
    from sevflow.blocks.policy import ApprovalPolicy
    from sevflow.errors import ConfigurationError
    from sevflow.tasks import notify

    runs = _runs_of(incident_id)
    procedure = _procedure_runs(runs)
    tags = {k: v for k, _, v in (t.partition(":") for t in procedure[0].tags)}
    severity = Severity.parse(tags.get("sev", "4"))
    service = tags.get("service", "?")
    findings = records.follow_up_findings(severity, read_postmortem_edit(runs))
    this_run = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    if not findings:
        write_record(this_run, f"{RECORD_PREFIX}follow-up", TimelineEntry(
            at=utcnow(), source="sevflow", kind="note",
            description="Post-incident follow-up: post-mortem complete, every action item has an owner and a date",
        ).model_dump(mode="json"))
        publish_incident_record(incident_id)
        return []
    try:
        block = ApprovalPolicy.load(policy).incident_commander(severity)
    except ValueError as exc:
        raise ConfigurationError(f"No sevflow Approval Policy block named {policy!r}: the follow-up cannot find "
                                 "the incident commander's notification block.") from exc
    if not block:
        raise ConfigurationError(
            f"The post-mortem of {incident_id} is incomplete ({'; '.join(findings)}) but policy {policy!r} names no "
            "notification block for the incident commander: set `incident_commander_block`, or a notification "
            "block on its escalation tier named \"incident commander\".")
    subject, body = records.follow_up_message(incident_id, severity, service, findings,
                                              run_url(procedure[0].id))
    notify.send(block, subject, body)
    write_record(this_run, f"{RECORD_PREFIX}follow-up", TimelineEntry(
        at=utcnow(), source="sevflow", kind="note",
        description=f"Post-incident follow-up: post-mortem incomplete ({'; '.join(findings)}); told the incident "
        f"commander via {block}",
    ).model_dump(mode="json"))
    publish_incident_record(incident_id)
    return findings
