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
from datetime import date, datetime, timedelta, timezone
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
    edit: PostmortemEdit | None = Field(default=None, description="the incident commander's parts, when given")
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
    figures = incident_figures(facts.timeline, facts.severity, facts.started_at, facts.first_alert_at)
    lines = [*_summary(facts), "", *render_figures(figures), "", *_timeline(facts), ""]
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
    missing = missing_parts(facts.edit)
    if facts.severity.postmortem_required and missing:
        lines += ["", f"> **Incomplete: a post-mortem is required for {facts.severity.value}.** Missing from the "
                  f"incident commander: {', '.join(md.escape(m) for m in missing)}. Add them with "
                  f"{md.code(f'sevflow postmortem {facts.incident_id} --edit')}."]
    for title, body in facts.sections.items():
        lines += ["", f"## {title}", body]
    return "\n".join(lines) + "\n"


class ActionItem(BaseModel):
    """An action item of the post-mortem: what, who owns it, by when."""

    action: str
    owner: str = ""
    due: date | None = None

    @property
    def complete(self) -> bool:
        return bool(self.action.strip() and self.owner.strip() and self.due)

    def line(self) -> str:
        """"Action - Owner - Due date" as in the runbook's template."""
        return " - ".join([md.escape(self.action), md.escape(self.owner) if self.owner.strip() else _OWNER_PLACEHOLDER,
                           self.due.isoformat() if self.due else _DUE_PLACEHOLDER])

    @classmethod
    def parse(cls, text: str) -> ActionItem:
        """From "text;owner;YYYY-MM-DD" (owner and date may be left empty). ValueError says what is wrong."""
        parts = [p.strip() for p in text.split(";")]
        if len(parts) > 3 or not parts[0]:
            raise ValueError(f"action item {text!r}: write it as \"what;owner;YYYY-MM-DD\" (owner and date may be empty)")
        owner = parts[1] if len(parts) > 1 else ""
        due_text = parts[2] if len(parts) > 2 else ""
        try:
            due = date.fromisoformat(due_text) if due_text else None
        except ValueError:
            raise ValueError(f"action item {text!r}: due date {due_text!r} is not YYYY-MM-DD") from None
        return cls(action=parts[0], owner=owner, due=due)


class PostmortemEdit(BaseModel):
    """The incident commander's part of the post-mortem, as stored with the incident."""

    by: str
    at: datetime
    root_cause: str = ""
    impact: str = ""
    prevention: str = ""
    action_items: list[ActionItem] = Field(default_factory=list)

    def missing(self) -> list[str]:
        """What a complete post-mortem still lacks, in the incident commander's words."""
        return missing_parts(self)


def missing_parts(edit: PostmortemEdit | None) -> list[str]:
    """What the post-mortem lacks: root cause, impact, prevention, action items, or owners and due dates."""
    if edit is None:
        return ["root cause", "impact", "prevention", "action items"]
    missing = [name.replace("_", " ") for name in ("root_cause", "impact", "prevention")
               if not getattr(edit, name).strip()]
    if not edit.action_items:
        missing.append("action items")
    missing += [f"owner and due date of action item “{item.action}”" for item in edit.action_items if not item.complete]
    return missing


def apply_edit(facts: PostmortemFacts, edit: PostmortemEdit | None) -> PostmortemFacts:
    """The facts with the incident commander's parts filled in (theirs win over the run's)."""
    if edit is None:
        return facts
    return facts.model_copy(update={
        "root_cause": edit.root_cause or facts.root_cause,
        "impact": edit.impact or facts.impact,
        "prevention": edit.prevention or facts.prevention,
        "action_items": [item.line() for item in edit.action_items] or facts.action_items,
        "edit": edit,
    })


def follow_up_findings(severity: Severity, edit: PostmortemEdit | None) -> list[str]:
    """What the post-incident follow-up tells the incident commander is still to do (pure):
    for SEV-1 and SEV-2 everything a complete post-mortem lacks; below, only action items
    without an owner or a due date (the post-mortem itself is optional there)."""
    if severity.postmortem_required:
        return missing_parts(edit)
    return [m for m in missing_parts(edit) if m.startswith("owner and due date")]


def follow_up_message(incident_id: str, severity: Severity, service: str, findings: list[str],
                      link: str | None) -> tuple[str, str]:
    """Subject and body of the follow-up's notice to the incident commander."""
    subject = f"[{severity.value}] Post-incident follow-up for {incident_id} ({service}): post-mortem incomplete"
    body = "\n".join([
        subject, "",
        "Still missing from the post-mortem:", *(f"- {m}" for m in findings), "",
        f"Add them with: sevflow postmortem {incident_id} --edit",
        *([f"Incident run: {link}"] if link else []),
    ])
    return subject, body


class ChecklistItem(BaseModel):
    """One item of the runbook's post-incident checklists, proven by the record or not."""

    text: str
    group: str = Field(description='"Immediate" or "Follow-Up"')
    due: datetime
    proven: bool
    evidence: str = Field(default="", description="markdown: the entry, artifact or run that proves it")
    overdue: bool = False


def prove_checklists(
    facts: PostmortemFacts,
    proven: AbstractSet[str] = frozenset(),
    *,
    now: datetime | None = None,
    artifact: str | None = None,
) -> list[ChecklistItem]:
    """Tick each runbook item the record proves, with its evidence; flag the unticked ones
    whose deadline (1 h / 24 h after the end of the incident) has passed at `now` (pure).

    `proven` holds items a run proved by its own means (e.g. Memory/Disk Full's monitoring);
    `artifact` names the published post-mortem artifact. An unknown text is a ValueError.
    """
    unknown = sorted(set(proven) - set(IMMEDIATE_CHECKLIST) - set(FOLLOW_UP_CHECKLIST))
    if unknown:
        raise ValueError(
            f"unknown checklist items {unknown}; use the runbook's texts: "
            f"{', '.join(IMMEDIATE_CHECKLIST + FOLLOW_UP_CHECKLIST)}"
        )
    ordered = sorted(facts.timeline, key=lambda e: _utc(e.at))
    edit = facts.edit
    edited = f"post-mortem edited by {md.escape(edit.by)} at {_stamp(_utc(edit.at))} UTC" if edit else ""

    def first(test: Any) -> TimelineEntry | None:
        return next((e for e in ordered if test(e)), None)

    def claimed(item: str) -> TimelineEntry | None:
        return first(lambda e: item in (e.details.get("checklist") or []))

    def by_entry(entry: TimelineEntry | None) -> str:
        return _evidence(entry, facts.run_url) if entry is not None else ""

    evidence: dict[str, str] = {}
    if artifact:
        evidence["Incident documented"] = f"artifact {md.code(artifact)}" + (f" ({facts.run_url})" if facts.run_url else "")
    if ordered:
        evidence["Timeline created"] = (f"{len(ordered)} entries, {_stamp(_utc(ordered[0].at))} to "
                                        f"{_stamp(_utc(ordered[-1].at))} UTC" + (f" (artifact {md.code(artifact)})" if artifact else ""))
    root = first(lambda e: _milestone(e) == "Root cause identified")
    if edit and edit.root_cause.strip():
        evidence["Root cause identified"] = edited
    elif root is not None:
        evidence["Root cause identified"] = by_entry(root)
    evidence["Immediate fix applied"] = by_entry(first(lambda e: _milestone(e) == "Fix deployed"))
    # A procedure ends "resolved" only after its own verification passed.
    evidence["System verified working"] = by_entry(first(lambda e: _milestone(e) == "Resolved"))
    if edit and not missing_parts(edit):
        evidence["Full post-mortem written"] = edited
    if edit and edit.action_items and all(i.complete for i in edit.action_items):
        evidence["Action items identified"] = f"{len(edit.action_items)} with owner and due date; {edited}"
    if edit and edit.prevention.strip():
        evidence["Prevention measures planned"] = edited
    # Someone was told: a notification that went out at a gate.
    told = first(lambda e: e.kind == "escalation" and "NOTIFICATION FAILED" not in e.description
                 and "no notification block" not in e.description)
    if told is not None:
        evidence["Team notified"] = by_entry(told)
    for item in IMMEDIATE_CHECKLIST + FOLLOW_UP_CHECKLIST:
        if not evidence.get(item):
            entry = claimed(item)
            if entry is not None:
                evidence[item] = by_entry(entry)
            elif item in proven:
                evidence[item] = "recorded by the run" + (f" {facts.run_url}" if facts.run_url else "")
    ended = _utc(facts.ended_at)
    items = []
    for text, name, hours in ([(t, "Immediate", 1) for t in IMMEDIATE_CHECKLIST]
                              + [(t, "Follow-Up", 24) for t in FOLLOW_UP_CHECKLIST]):
        due = ended + timedelta(hours=hours)
        ok = bool(evidence.get(text))
        items.append(ChecklistItem(text=text, group=name, due=due, proven=ok, evidence=evidence.get(text, ""),
                                   overdue=not ok and now is not None and _utc(now) > due))
    return items


def render_checklists(
    facts: PostmortemFacts,
    proven: AbstractSet[str] = frozenset(),
    *,
    now: datetime | None = None,
    artifact: str | None = None,
) -> str:
    """The runbook's post-incident checklists: each item ticked only with its evidence, the
    unticked ones past their deadline flagged OVERDUE (see :func:`prove_checklists`)."""
    items = prove_checklists(facts, proven, now=now, artifact=artifact)
    ended = _utc(facts.ended_at)
    severity = facts.severity
    lines = [
        "## Post-Incident",
        "",
        f"_Incident `{facts.incident_id}` ({severity.value}, {facts.service}), ended "
        f"{_stamp(ended)} UTC with outcome: {facts.outcome}. An item is ticked only when the record "
        "proves it (the evidence follows it); the others are for people to do._",
    ]
    for name, heading, hours in (("Immediate", "Immediate (Within 1 Hour)", 1), ("Follow-Up", "Follow-Up (Within 24 Hours)", 24)):
        lines += ["", f"### {heading}", f"_Due by {_stamp(ended + timedelta(hours=hours))} UTC._"]
        for item in (i for i in items if i.group == name):
            line = f"- [{'x' if item.proven else ' '}] {item.text}"
            if item.proven:
                line += f" — evidence: {item.evidence}"
            elif item.overdue:
                line += f" — **OVERDUE** (due {_stamp(item.due)} UTC)"
            lines.append(line)
    lines.append("")
    if severity.postmortem_required:
        missing = missing_parts(facts.edit)
        lines.append(
            f"> **A post-mortem is required for {severity.value}** ({severity.title}): "
            + (f"still missing: {', '.join(md.escape(m) for m in missing)} (`sevflow postmortem "
               f"{facts.incident_id} --edit`)." if missing else "complete.")
        )
    else:
        lines.append(f"_A post-mortem is optional for {severity.value} ({severity.title})._")
    return "\n".join(lines) + "\n"


def _evidence(entry: TimelineEntry, run_url: str | None) -> str:
    url = str(entry.details.get("run_url") or run_url or "")
    text = f"entry {_stamp(_utc(entry.at))} UTC “{md.escape(entry.description)}”"
    return f"[{text}]({url})" if url else text


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
        if (milestone is None and entry.kind == "alert" and "First alert" not in seen
                and facts.first_alert_at is not None and _utc(entry.at) == _utc(facts.first_alert_at)):
            milestone = "First alert"  # the recorded alert is the first alert: one line, not two
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
    health = []
    if facts.health_before or facts.health_after:  # what the run's own probes saw, before and after acting
        health = ["", f"- **Health before:** {md.escape(facts.health_before or 'not checked by this run')}",
                  f"- **Health after:** {md.escape(facts.health_after or 'not checked by this run')}"]
    return [*(f"- {md.escape(step)}" for step in facts.resolution), *health, "",
            f"Outcome: **{md.escape(facts.outcome)}**."]


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
    utc = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    # A plain datetime: Prefect's DateTime subclass loses its time zone in `+ timedelta`, and
    # a naive result then cannot be compared with an aware one.
    return datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond,
                    tzinfo=timezone.utc)


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


# --- Figures: detection, time to acknowledge / mitigate / resolve, every approval -----------


class Milestone(BaseModel):
    """One figure of the response: when it happened, how long after detection, and the entry
    that proves it (None when the record holds no such entry)."""

    name: str
    at: datetime | None = None
    since_detection: timedelta | None = None
    entry: TimelineEntry | None = None


class Page(BaseModel):
    """Someone paged at a gate: the escalation tier, who, when."""

    tier: int
    at: datetime
    who: str


class GateFigures(BaseModel):
    """One approval gate of one run: asked when, each answer, who was paged, how long it waited."""

    gate: str
    run: str = ""
    requested_at: datetime | None = None
    request: str = ""
    answers: list[TimelineEntry] = Field(default_factory=list)
    pages: list[Page] = Field(default_factory=list)
    decided_at: datetime | None = None
    decision: str = Field(default="waiting", description="approved, rejected, expired or waiting")

    @property
    def waited(self) -> timedelta | None:
        if self.requested_at is None or self.decided_at is None:
            return None
        return max(_utc(self.decided_at) - _utc(self.requested_at), timedelta(0))


class IncidentFigures(BaseModel):
    """The numbers incident tools report, computed from the timeline's entries (never typed)."""

    detected: Milestone
    detection: str = Field(description='which alert detected it, or "start of run"')
    acknowledged: Milestone
    mitigated: Milestone
    resolved: Milestone
    target: timedelta | None = Field(default=None, description="the severity's response target; None: normal queue")
    target_text: str = ""
    gates: list[GateFigures] = Field(default_factory=list)


_DECIDING = ("counted", "rejected")


def incident_figures(entries: list[TimelineEntry], severity: Severity, started_at: datetime,
                     first_alert_at: datetime | None = None) -> IncidentFigures:
    """Figures of an incident from its timeline entries (pure).

    - detected: the first firing alert the intake attached (an alert entry that is not a
      resolution), else `first_alert_at` when the run was told of one, else the first run's
      start (`started_at`);
    - acknowledged: the first answer at a gate that decided something (counted or rejected;
      an ignored answer is no response) or the first entry marked a human action;
    - mitigated: the first change applied (a "Fix deployed" milestone);
    - resolved: the last "Resolved" milestone (a later run may reopen and resolve again).
    """
    ordered = sorted(entries, key=lambda e: _utc(e.at))
    alert = next((e for e in ordered if e.kind == "alert" and e.details.get("outcome") != "resolved"
                  and "resolved" not in str(e.details.get("event", "")).lower()), None)
    if alert is not None:
        start, detection = _utc(alert.at), md.escape(alert.description)
    elif first_alert_at is not None:
        start, detection = _utc(first_alert_at), "first alert (time given to the run; the alert itself is not recorded)"
    else:
        start, detection = _utc(started_at), "start of run (no alert recorded)"

    def milestone(name: str, entry: TimelineEntry | None) -> Milestone:
        if entry is None:
            return Milestone(name=name)
        at = _utc(entry.at)
        return Milestone(name=name, at=at, since_detection=max(at - start, timedelta(0)), entry=entry)

    acknowledged = next((e for e in ordered if (e.kind == "approval" and e.source == "approver"
                                                 and e.details.get("verdict") in _DECIDING)
                         or e.details.get("human_action")), None)
    mitigated = next((e for e in ordered if _milestone(e) == "Fix deployed"), None)
    resolved = next((e for e in reversed(ordered) if _milestone(e) == "Resolved"), None)
    return IncidentFigures(
        detected=Milestone(name="Detected", at=start, since_detection=timedelta(0), entry=alert),
        detection=detection,
        acknowledged=milestone("Acknowledged", acknowledged),
        mitigated=milestone("Mitigated", mitigated),
        resolved=milestone("Resolved", resolved),
        target=severity.response_target,
        target_text=severity.response_text,
        gates=gate_figures(ordered),
    )


def gate_figures(entries: list[TimelineEntry]) -> list[GateFigures]:
    """Every approval gate in the entries, per run, in the order they were asked (pure)."""
    gates: dict[tuple[str, str], GateFigures] = {}
    for entry in sorted(entries, key=lambda e: _utc(e.at)):
        name = entry.details.get("gate")
        if entry.kind not in ("approval", "escalation") or not name:
            continue
        run = str(entry.details.get("run", ""))
        gate = gates.setdefault((run, str(name)), GateFigures(gate=str(name), run=str(entry.details.get("run_name", run))))
        if entry.kind == "escalation":
            gate.pages.append(Page(tier=int(entry.details.get("tier", 0)), at=_utc(entry.at), who=entry.description))
        elif "verdict" not in entry.details:
            gate.requested_at, gate.request = _utc(entry.at), entry.description
        else:
            gate.answers.append(entry)
    for gate in gates.values():
        verdicts = [(a, a.details.get("verdict")) for a in gate.answers]
        final = next(((a, v) for a, v in verdicts if v in ("rejected", "expired")), None)
        if final is not None:
            gate.decided_at, gate.decision = _utc(final[0].at), str(final[1])
        elif any(v == "counted" for _, v in verdicts):
            # With more than one approval needed, the gate opened at the last counted answer.
            gate.decided_at = _utc(next(a for a, v in reversed(verdicts) if v == "counted").at)
            gate.decision = "approved"
    return list(gates.values())


def render_figures(figures: IncidentFigures) -> list[str]:
    """The post-mortem's "Detection and Response" and "Approvals" sections (times to the second)."""
    detected = figures.detected
    assert detected.at is not None
    lines = [
        "## Detection and Response",
        f"_Times in UTC; each figure counts from detection and is computed from the timeline's entries. "
        f"Response target for this severity: {figures.target_text}._",
        "",
        f"- **Detected:** {_stamp(detected.at)} — {figures.detection}",
    ]
    for label, figure in (("Time to acknowledge", figures.acknowledged), ("Time to mitigate", figures.mitigated),
                          ("Time to resolve", figures.resolved)):
        lines.append(f"- **{label}:** {_figure(figure, figures.target, detected.at)}")
    lines += ["", "## Approvals"]
    if not figures.gates:
        return [*lines, "_No approval gate was opened._"]
    for gate in figures.gates:
        waited = gate.waited
        head = f"- **Gate `{md.escape(gate.gate)}`**" + (f" of run `{md.escape(gate.run)}`" if gate.run else "")
        if gate.requested_at is not None:
            head += f": asked {_stamp(gate.requested_at)}"
        head += (f"; {gate.decision} {_stamp(gate.decided_at)} after waiting {_duration(waited)}"
                 if gate.decided_at is not None and waited is not None else f"; {gate.decision}, no decision recorded")
        lines.append(head)
        if gate.request:
            lines.append(f"  - request: {md.escape(gate.request)}")
        lines += [f"  - paged tier {p.tier} at {_stamp(p.at)}: {md.escape(p.who)}" for p in gate.pages]
        for answer in gate.answers:
            reason = str(answer.details.get("reason", "")).strip()
            lines.append(
                f"  - {_stamp(_utc(answer.at))} {md.escape(answer.actor or '?')} answered "
                f"{md.escape(str(answer.details.get('decision', '?')))} → {answer.details.get('verdict')}"
                + (f" ({_duration(_utc(answer.at) - gate.requested_at)} after the request)" if gate.requested_at else "")
                + (f", reason “{md.escape(reason)}”" if reason else "")
                + f": {md.escape(answer.description)}")
    return lines


def _figure(figure: Milestone, target: timedelta | None, detected: datetime) -> str:
    if figure.at is None or figure.since_detection is None:
        return "not recorded"
    text = f"{_duration(figure.since_detection)} ({_stamp(figure.at, detected)} UTC"
    if figure.entry is not None:
        text += f", “{md.escape(figure.entry.description)}”"
    text += ")"
    # "Immediate" (zero) and "normal queue" (None) have no time to meet or miss.
    if target is None or target == timedelta(0):
        return text
    if figure.since_detection <= target:
        return f"{text}, within the {_duration(target)} target"
    return f"{text}, over the {_duration(target)} target by {_duration(figure.since_detection - target)}"


PostmortemFacts.model_rebuild()
