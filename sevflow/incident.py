"""The incident a run works on: opening it (id, tags, first timeline line) and closing it
with its paperwork (timeline table, post-mortem, checklists) published as run artifacts.

The timeline is built from what Prefect recorded for the run: its durable sevflow records
(approval requests, answers, escalations), its task runs (each runbook step, when it ended,
how) and its state changes (suspended at a gate, resumed).
"""

from __future__ import annotations

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
    emit_incident_event,
    record_timeline,
    run_url,
    timeline_records,
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
        health_after=health_after,
        sections=sections or {},
    )
    key = _artifact_key(incident.incident_id)
    create_table_artifact(
        key=f"{key}-timeline", table=records.timeline_table(timeline),
        description=f"Timeline of incident {incident.incident_id} ({incident.procedure})",
    )
    postmortem = records.render_postmortem(facts)
    create_markdown_artifact(key=f"{key}-postmortem", markdown=postmortem,
                             description=f"Post-mortem of incident {incident.incident_id}")
    create_markdown_artifact(key=f"{key}-checklists",
                             markdown=records.render_checklists(facts, set(proven) | {"Incident documented", "Timeline created"}),
                             description=f"Post-incident checklists of incident {incident.incident_id}")
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
            merged.append(entry)
    return sorted(merged, key=lambda e: e.at)


def incident_postmortem(incident_id: str) -> str:
    """The post-mortem of the whole incident, rendered from every run's durable records."""
    runs = incident_runs(incident_id)
    if not runs:
        raise LookupError(f"No runs of incident {incident_id!r}: `sevflow incidents` lists them.")
    tags = {k: v for k, _, v in (t.partition(":") for t in runs[0].tags)}
    entries = incident_timeline(incident_id)
    starts = [r.start_time or r.expected_start_time for r in runs if r.start_time or r.expected_start_time]
    ends = [r.end_time for r in runs if r.end_time]
    last = runs[-1]
    outcome = "resolved" if last.state and last.state.is_completed() and last.state.name == "Completed" else (
        last.state.name if last.state else "unknown")
    facts = records.PostmortemFacts(
        incident_id=incident_id, procedure=", ".join(dict.fromkeys(r.name for r in runs)),
        service=tags.get("service", "?"), severity=Severity.parse(tags.get("sev", "4")),
        started_at=min(starts) if starts else utcnow(), ended_at=max(ends) if ends else utcnow(), outcome=outcome,
        timeline=entries,
        resolution=[f"{r.name}: {r.state.name if r.state else '?'}" + (f" — {r.state.message}" if r.state and
                    r.state.message else "") for r in runs],
        response_at=next((e.at for e in entries if e.kind == "approval" and e.source == "approver"
                          and e.details.get("verdict") in ("counted", "rejected")), None),
    )
    return records.render_postmortem(facts)


def _artifact_key(incident_id: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in incident_id.lower()).strip("-")
    return cleaned or "incident"
