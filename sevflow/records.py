"""The incident's paperwork, rendered from what a run knows (EMERGENCY-PROCEDURES.md,
"Post-Incident"): the timeline as a table, the post-mortem in the runbook's template, and
the post-incident checklists with what the run can prove already ticked.

Pure: no I/O. Flows gather the facts and publish the results as artifacts.

A run records what was done and when, not why it broke: where it does not know something
(root cause, impact, prevention, owners), the text says so plainly, for a person to fill in.

Timeline entries mark the runbook's milestones with ``details["milestone"]`` set to one of
:data:`MILESTONES` (e.g. the deploy step's entry carries ``{"milestone": "Fix deployed"}``).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, Field

from sevflow import markdown as md
from sevflow.models import Severity, TimelineEntry

IMMEDIATE_CHECKLIST: tuple[str, ...] = (
    "Incident documented",
    "Timeline created",
    "Root cause identified",
    "Immediate fix applied",
    "System verified working",
)
FOLLOW_UP_CHECKLIST: tuple[str, ...] = (
    "Full post-mortem written",
    "Action items identified",
    "Prevention measures planned",
    "Monitoring updated",
    "Team notified",
)
MILESTONES: tuple[str, ...] = (
    "First alert",
    "Investigation started",
    "Root cause identified",
    "Fix deployed",
    "Resolved",
)
MILESTONE_DETAIL = "milestone"

_OWNER_PLACEHOLDER = "Owner: to assign"
_DUE_PLACEHOLDER = "Due date: to set"


class PostmortemFacts(BaseModel):
    """Everything the post-mortem says, as the run (and the incident commander's form) knows it."""

    incident_id: str
    procedure: str = Field(description="the flow that worked the incident, e.g. production-system-down")
    service: str
    severity: Severity
    started_at: datetime = Field(description="when the procedure's run started")
    ended_at: datetime = Field(description="when the procedure's run ended")
    outcome: str = Field(description='e.g. "resolved", "rejected", "awaiting human decision", "verification failed"')
    impact: str | None = None
    first_alert_at: datetime | None = None
    timeline: list[TimelineEntry] = Field(default_factory=list)
    root_cause: str | None = None
    resolution: list[str] = Field(default_factory=list, description="what was done, one line each")
    prevention: str | None = None
    action_items: list[str] = Field(
        default_factory=list,
        description='"Action - Owner - Due date" as in the template; a missing owner and due date '
        "are shown as placeholders",
    )
    run_url: str | None = None
    response_at: datetime | None = Field(default=None, description="first human or automated response")
    root_cause_candidates: list[str] = Field(
        default_factory=list, description="what the run's facts point at (commits undone, files restored)")
    health_before: str | None = None
    health_after: str | None = None
    sections: dict[str, str] = Field(
        default_factory=dict,
        description="further sections a procedure adds after the template's (title → markdown), e.g. "
        "the security breach's actions taken, legal and compliance, lessons learned",
    )


def timeline_table(entries: list[TimelineEntry]) -> list[dict[str, str]]:
    """Rows for a table artifact, oldest first: time (UTC), source, kind, what, who."""
    return [
        {
            "time": _utc(entry.at).strftime("%Y-%m-%d %H:%M:%S"),
            "source": entry.source,
            "kind": entry.kind,
            "what": entry.description,
            "who": entry.actor,
        }
        for entry in sorted(entries, key=lambda e: _utc(e.at))
    ]


def render_postmortem(facts: PostmortemFacts) -> str:
    """The post-mortem in the runbook's template, filled with what the run knows."""
    lines = [*_summary(facts), "", *_timeline(facts), ""]
    lines += [
        "## Root Cause",
        md.escape(facts.root_cause) if facts.root_cause
        else "_Not known to this run: fill in root cause (the run records what was done, not why it broke)._",
        *(["", "Candidates from what this run found (to confirm or rule out):",
            *(f"- {md.escape(c)}" for c in facts.root_cause_candidates)] if facts.root_cause_candidates else []),
        "",
        "## Resolution",
        *_resolution(facts),
        "",
        "## Prevention",
        md.escape(facts.prevention) if facts.prevention
        else "_Not known to this run: fill in what will prevent this in future._",
        "",
        "## Action Items",
        *_action_items(facts.action_items),
    ]
    for title, body in facts.sections.items():
        lines += ["", f"## {title}", body]
    return "\n".join(lines) + "\n"


def render_checklists(facts: PostmortemFacts, proven: AbstractSet[str]) -> str:
    """The runbook's post-incident checklists, with the items in `proven` ticked.

    `proven` holds the runbook's item texts (e.g. "Timeline created"); an unknown text is a
    ValueError, so a misspelt item cannot silently stay unticked.
    """
    unknown = sorted(set(proven) - set(IMMEDIATE_CHECKLIST) - set(FOLLOW_UP_CHECKLIST))
    if unknown:
        raise ValueError(
            f"unknown checklist items {unknown}; use the runbook's texts: "
            f"{', '.join(IMMEDIATE_CHECKLIST + FOLLOW_UP_CHECKLIST)}"
        )
    ended = _utc(facts.ended_at)
    severity = facts.severity
    lines = [
        "## Post-Incident",
        "",
        f"_Incident `{facts.incident_id}` ({severity.value}, {facts.service}), run ended "
        f"{_stamp(ended)} UTC with outcome: {facts.outcome}. Ticked items are proven by this run's "
        "records; the others are for people to do and tick._",
        "",
        "### Immediate (Within 1 Hour)",
        f"_Due by {_stamp(ended + timedelta(hours=1))} UTC._",
        *_checklist(IMMEDIATE_CHECKLIST, proven),
        "",
        "### Follow-Up (Within 24 Hours)",
        f"_Due by {_stamp(ended + timedelta(hours=24))} UTC._",
        *_checklist(FOLLOW_UP_CHECKLIST, proven),
        "",
    ]
    if severity.postmortem_required:
        lines.append(
            f"> **A post-mortem is required for {severity.value}** ({severity.title}): fill in root "
            "cause, impact, prevention and action items in the post-mortem artifact."
        )
    else:
        lines.append(f"_A post-mortem is optional for {severity.value} ({severity.title})._")
    return "\n".join(lines) + "\n"


def _summary(facts: PostmortemFacts) -> list[str]:
    start = _incident_start(facts)
    end = _utc(facts.ended_at)
    start_label = "first alert" if facts.first_alert_at is not None else "start of run"
    end_label = "resolved" if facts.outcome == "resolved" else f"end of run ({facts.outcome})"
    lines = [
        "## Incident Summary",
        f"**Date:** {start:%Y-%m-%d}",
        f"**Duration:** {_duration(end - start)} ({_stamp(start, end)}–{_stamp(end, start)} UTC, "
        f"{start_label} to {end_label})",
        f"**Severity:** {facts.severity.value} — {facts.severity.title}",
        f"**Impact:** {md.escape(facts.impact) if facts.impact else '_Not known to this run: fill in who and what was affected._'}",
        f"**Response:** {_response(facts, start)}",
        f"**Outcome:** {facts.outcome}",
        f"**Incident:** `{facts.incident_id}` · procedure `{facts.procedure}` · service `{facts.service}`",
    ]
    if facts.run_url:
        lines.append(f"**Run:** {facts.run_url}")
    if facts.health_before or facts.health_after:
        lines.append(f"**Health:** before: {md.escape(facts.health_before or 'not checked')}; "
                     f"after: {md.escape(facts.health_after or 'not checked')}")
    # Two trailing spaces are a markdown line break: the summary renders one field per line,
    # as the template shows it, instead of one run-on paragraph.
    return [lines[0]] + [f"{line}  " for line in lines[1:-1]] + [lines[-1]]


def _response(facts: PostmortemFacts, start: datetime) -> str:
    """Response target vs actual: time from first alert (or start) to first response."""
    severity = facts.severity
    text = f"target {severity.response_text}"
    if facts.response_at is None:
        return f"{text}; actual: no response recorded by this run"
    responded = _utc(facts.response_at)
    taken = max(responded - start, timedelta(0))
    since = "first alert" if facts.first_alert_at is not None else "start of run"
    text += f"; actual {_duration(taken)} from {since} to first response ({_stamp(responded, start)} UTC)"
    target = severity.response_target
    # "Immediate" (zero) and "normal queue" (None) have no time to meet or miss.
    if target is None or target == timedelta(0):
        return text
    if taken <= target:
        return f"{text}, within target"
    return f"{text}, target missed by {_duration(taken - target)}"


def _timeline(facts: PostmortemFacts) -> list[str]:
    # (time, rank, text): at equal times, alert and start come before what the run recorded,
    # and "Resolved" after it.
    events: list[tuple[datetime, int, str]] = []
    seen: set[str] = set()
    for entry in facts.timeline:
        milestone = _milestone(entry)
        text = md.escape(entry.description) + (f" ({md.escape(entry.actor)})" if entry.actor else "")
        reason = str(entry.details.get("reason", "")).strip()
        if entry.kind == "approval" and reason and reason not in entry.description:
            text += f" — reason: “{md.escape(reason)}”"
        if milestone:
            seen.add(milestone)
            text = f"{milestone} — {text}"
        events.append((_utc(entry.at), 2, text))
    if facts.first_alert_at is not None and "First alert" not in seen:
        events.append((_utc(facts.first_alert_at), 0, "First alert"))
        seen.add("First alert")
    if "Investigation started" not in seen:
        events.append((_utc(facts.started_at), 1, f"Investigation started — `{facts.procedure}` run began"))
        seen.add("Investigation started")
    if facts.outcome == "resolved" and "Resolved" not in seen:
        events.append((_utc(facts.ended_at), 3, "Resolved"))
        seen.add("Resolved")
    events.sort(key=lambda event: (event[0], event[1]))

    days = {at.date() for at, _, _ in events} | {_utc(facts.ended_at).date()}
    with_date = len(days) > 1  # HH:MM alone is ambiguous across midnight
    lines = ["## Timeline", "_Times in UTC._"]
    lines += [f"- {at:%Y-%m-%d %H:%M:%S} - {text}" if with_date else f"- {at:%H:%M:%S} - {text}"
              for at, _, text in events]
    for milestone in MILESTONES:
        if milestone in seen:
            continue
        if milestone == "Root cause identified" and facts.root_cause:
            lines.append("- --:-- - Root cause identified — _time not recorded by this run: fill in_")
        elif milestone == "Resolved":
            lines.append(f"- --:-- - Resolved — _not resolved by this run ({facts.outcome})_")
        else:
            lines.append(f"- --:-- - {milestone} — _not known to this run: fill in_")
    return lines


def _resolution(facts: PostmortemFacts) -> list[str]:
    if not facts.resolution:
        return [
            f"_This run made no change to fix it (outcome: {facts.outcome}). "
            "Fill in anything done outside it._"
        ]
    return [*(f"- {md.escape(step)}" for step in facts.resolution), "", f"Outcome: **{md.escape(facts.outcome)}**."]


def _action_items(items: list[str]) -> list[str]:
    if not items:
        return [f"- [ ] _Not known to this run: fill in action items_ - {_OWNER_PLACEHOLDER} - {_DUE_PLACEHOLDER}"]
    lines = []
    for item in items:
        # "Action - Owner - Due date" already complete: keep it as written.
        if item.count(" - ") >= 2:
            lines.append(f"- [ ] {item}")
        else:
            lines.append(f"- [ ] {item} - {_OWNER_PLACEHOLDER} - {_DUE_PLACEHOLDER}")
    return lines


def _checklist(items: tuple[str, ...], proven: AbstractSet[str]) -> list[str]:
    return [f"- [{'x' if item in proven else ' '}] {item}" for item in items]


def _milestone(entry: TimelineEntry) -> str | None:
    value = str(entry.details.get(MILESTONE_DETAIL, "")).strip().lower()
    return next((m for m in MILESTONES if m.lower() == value), None)


def _incident_start(facts: PostmortemFacts) -> datetime:
    """The first alert if it came before the run, else the run's start."""
    candidates = [_utc(facts.started_at)]
    if facts.first_alert_at is not None:
        candidates.append(_utc(facts.first_alert_at))
    return min(candidates)


def _duration(span: timedelta) -> str:
    seconds = max(int(span.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min {seconds % 60} s"


def _stamp(at: datetime, other: datetime | None = None) -> str:
    """HH:MM:SS, with the date when `other` falls on another day (or when there is no `other`)."""
    if other is not None and at.date() == _utc(other).date():
        return f"{at:%H:%M:%S}"
    return f"{at:%Y-%m-%d %H:%M:%S}"


def _utc(at: datetime) -> datetime:
    # sevflow's datetimes are timezone-aware; a naive one (e.g. parsed from text without an
    # offset) is taken to be UTC rather than the machine's local time.
    if at.tzinfo is None:
        return at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc)


# --- Security Breach: what the record says beyond the template -----------------------------


def breach_alert(incident_id: str, account: str, severity: Severity, stage: str, known: list[str]) -> tuple[str, str]:
    """Subject and body of a breach alert to humans: what is known so far, in plain lines."""
    subject = f"[{severity.value}] SECURITY BREACH in AWS account {account} (incident {incident_id}): {stage}"
    return subject, "\n".join([subject, "", *known])


def breach_sections(
    plans: dict[str, Any], evidence: Any, scope: Any, rotations: list[dict[str, str]], opened_at: datetime,
) -> dict[str, str]:
    """The security breach's own sections of the post-mortem: actions taken with the prior
    state of each (and how to undo it), the scope, the evidence, legal and compliance, and
    lessons learned (fields for people)."""
    actions: list[str] = []
    for gate, plan in plans.items():
        actions += [f"- **{gate}** (plan `{plan.digest[:12]}`): {plan.title}"]
        actions += [f"  - `{line}`" for line in plan.command_lines()]
        actions += [f"  - undo: {plan.undo}"]
        if plan.details:
            actions += ["  " + line for line in plan.details.splitlines() if line.strip()]
    actions += [f"- new key `{r['new']}` for `{r['user']}` (saved in AwsCredentials block `{r['block']}`); old key "
                f"`{r['old']}` deleted after the new one answered" for r in rotations]
    scope_lines = [
        f"- **Exposure window:** {scope.window_text}",
        f"- **Source IPs seen:** {', '.join(scope.source_ips) or 'none recorded'}",
        f"- **Resources touched:** {', '.join(scope.resources_touched) or 'none recorded'}",
        *[f"- `{name}`: {count}" for name, count in scope.event_counts.items()],
        *[f"- key `{a.key.access_key_id}` ({a.key.user}): last used {a.key.last_used_at or 'never'} "
          f"{a.key.last_used_service}; {len(a.events)} {a.source} event(s)" for a in scope.activity],
        *[f"- **Not known:** {gap}" for gap in scope.gaps],
    ]
    evidence_lines = [
        f"- bucket `{evidence.bucket}`, Object Lock compliance mode until {evidence.retain_until.isoformat()}",
        *[f"- `{o.key}` sha256 `{o.sha256}` ({o.size} bytes): {o.what}" for o in evidence.objects],
        *([f"- manifest `{evidence.manifest.key}` sha256 `{evidence.manifest.sha256}`"] if evidence.manifest else []),
        *[f"- snapshot `{snap}` of volume `{vol}`" for vol, snap in evidence.snapshots.items()],
    ]
    deadline = opened_at + timedelta(hours=72)
    legal = [
        f"- **Aware since:** {opened_at.isoformat()} (this run's start)",
        f"- **Regulatory clocks to check with legal:** e.g. GDPR Art. 33, 72 h from awareness → "
        f"{deadline.isoformat()}; contracts and sector rules may be shorter",
        f"- **Data possibly exposed:** {', '.join(scope.resources_touched) or 'no resource recorded as touched'}"
        + ("; the record is incomplete (see Not known)" if scope.gaps else ""),
        f"- **Evidence:** kept unaltered in `{evidence.bucket}` (chain of custody: manifest sha256 "
        f"`{evidence.manifest.sha256 if evidence.manifest else '-'}`)",
        "- **Decision on notifying authorities and affected people:** _to be filled in by legal_",
    ]
    lessons = [
        "- **What went well:** _to fill in_",
        "- **What went wrong:** _to fill in_",
        "- **How the credentials were compromised:** _to fill in_",
        "- **What would have detected it sooner:** _to fill in_",
    ]
    return {
        "Actions Taken (with prior state)": "\n".join(actions) or "_none_",
        "Scope": "\n".join(scope_lines),
        "Evidence": "\n".join(evidence_lines),
        "Legal and Compliance": "\n".join(legal),
        "Lessons Learned": "\n".join(lessons),
    }


def access_log_review(scope: Any) -> str:
    """REMEDIATE's access-log review: every recorded use of the compromised keys."""
    lines = [f"# Access-log review\n\nExposure window: {scope.window_text}\n"]
    for a in scope.activity:
        lines.append(f"## Key `{a.key.access_key_id}` ({a.key.user})\n")
        lines.append(f"Last used: {a.key.last_used_at or 'never'} {a.key.last_used_service} {a.key.last_used_region}\n")
        if not a.available:
            lines.append(f"**No {a.source} record:** {a.unavailable_reason}. Review the service's own access logs by hand.\n")
            continue
        lines.append("| time (UTC) | event | source IP | resources |\n|---|---|---|---|")
        lines += [f"| {e.at.isoformat()} | {e.event_source} {e.event_name} | {e.source_ip} | {', '.join(e.resources)} |"
                  for e in a.events] or ["| - | no events recorded | | |"]
        lines.append("")
    return "\n".join(lines)
