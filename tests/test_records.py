"""Timeline table, post-mortem and checklists: pure rendering, checked against the runbook."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sevflow.models import Severity, TimelineEntry
from sevflow.records import (
    FOLLOW_UP_CHECKLIST,
    IMMEDIATE_CHECKLIST,
    ActionItem,
    PostmortemEdit,
    PostmortemFacts,
    apply_edit,
    follow_up_findings,
    follow_up_message,
    gate_figures,
    incident_figures,
    render_checklists,
    render_postmortem,
    timeline_table,
)

ALERT = datetime(2024, 5, 1, 9, 58, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return ALERT + timedelta(minutes=minutes)


def entry(minutes: float, description: str, **fields: object) -> TimelineEntry:
    fields.setdefault("source", "sevflow")
    fields.setdefault("kind", "step")
    return TimelineEntry(at=at(minutes), description=description, **fields)  # type: ignore[arg-type]


def facts(**overrides: object) -> PostmortemFacts:
    values: dict[str, object] = dict(
        incident_id="INC-42",
        procedure="production-system-down",
        service="web",
        severity=Severity.SEV1,
        started_at=at(1),
        ended_at=at(4),
        outcome="resolved",
        first_alert_at=ALERT,
        timeline=[
            entry(2, "approved rollback to good-0430", source="approver", kind="approval", actor="alice"),
            entry(3, "deploy (exit code 0)", details={"milestone": "Fix deployed"}),
        ],
        resolution=["Rolled back web to good-0430 (abc1234)", "Health checks passed"],
        response_at=at(1),
        run_url="http://127.0.0.1:4200/runs/flow-run/1234",
    )
    values.update(overrides)
    return PostmortemFacts(**values)  # type: ignore[arg-type]


def section(markdown: str, heading: str) -> str:
    match = re.search(rf"^## {heading}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section {heading!r}"
    return match.group(1).strip()


# Timeline table


def test_timeline_table_rows_are_sorted_and_in_utc() -> None:
    later = TimelineEntry(
        at=datetime(2024, 5, 1, 12, 5, 9, tzinfo=timezone(timedelta(hours=2))),  # 10:05:09 UTC
        source="http",
        kind="step",
        description="verify health: ok",
    )
    earlier = TimelineEntry(
        at=datetime(2024, 5, 1, 10, 1, 0),  # naive: taken as UTC
        source="approver",
        kind="approval",
        description="approved",
        actor="alice",
    )

    assert timeline_table([later, earlier]) == [
        {"time": "2024-05-01 10:01:00", "source": "approver", "kind": "approval", "what": "approved", "who": "alice"},
        {"time": "2024-05-01 10:05:09", "source": "http", "kind": "step", "what": "verify health: ok", "who": ""},
    ]


def test_timeline_table_of_nothing_is_empty() -> None:
    assert timeline_table([]) == []


# Post-mortem


def test_postmortem_has_the_runbooks_sections_in_order() -> None:
    markdown = render_postmortem(facts())

    headings = re.findall(r"^## (.+)$", markdown, re.M)
    assert headings == ["Incident Summary", "Detection and Response", "Approvals", "Timeline", "Root Cause", "Resolution", "Prevention", "Action Items"]
    assert markdown.startswith("## Incident Summary\n")


def test_summary_has_date_duration_severity_impact_and_response() -> None:
    summary = section(render_postmortem(facts(impact="All checkout requests failed")), "Incident Summary")

    assert "**Date:** 2024-05-01" in summary
    assert "**Duration:** 4 min 0 s (09:58:00–10:02:00 UTC, first alert to resolved)" in summary
    assert re.search(r"^\*\*Severity:\*\* SEV-1\b", summary, re.M)
    assert "**Impact:** All checkout requests failed" in summary
    assert "**Response:** target Immediate, all hands; actual 1 min 0 s from first alert" in summary
    assert "http://127.0.0.1:4200/runs/flow-run/1234" in summary


def test_summary_lines_break_as_in_the_template() -> None:
    summary = section(render_postmortem(facts()), "Incident Summary").splitlines()
    # Markdown joins consecutive lines; the hard breaks keep one field per line.
    assert all(line.endswith("  ") for line in summary[:-1])


@pytest.mark.parametrize(
    ("severity", "response_minutes", "expected"),
    [
        (Severity.SEV2, 20, "target Within 1 hour; actual 20 min 0 s from first alert to first response (10:18:00 UTC), within target"),
        (Severity.SEV2, 95, "target missed by 35 min 0 s"),
        (Severity.SEV3, 95, "within target"),
        (Severity.SEV4, 95, "target Normal queue; actual 1 h 35 min 0 s"),
    ],
)
def test_response_target_against_actual(severity: Severity, response_minutes: int, expected: str) -> None:
    markdown = render_postmortem(facts(severity=severity, response_at=at(response_minutes), ended_at=at(120)))
    assert expected in markdown


def test_response_without_a_recorded_response_says_so() -> None:
    markdown = render_postmortem(facts(response_at=None))
    assert "actual: no response recorded by this run" in markdown


def test_without_an_alert_the_incident_starts_with_the_run() -> None:
    markdown = render_postmortem(facts(first_alert_at=None, ended_at=at(1) + timedelta(seconds=42)))
    assert "**Duration:** 42 s (09:59:00–09:59:42 UTC, start of run to resolved)" in markdown
    assert "- --:-- - First alert — _not known to this run: fill in_" in markdown


def test_timeline_lists_milestones_and_what_the_run_did_in_order() -> None:
    lines = section(render_postmortem(facts()), "Timeline").splitlines()

    dated = [line for line in lines if re.match(r"^- \d\d:\d\d:\d\d - ", line)]
    assert dated == [
        "- 09:58:00 - First alert",
        "- 09:59:00 - Investigation started — `production-system-down` run began",
        "- 10:00:00 - approved rollback to good-0430 (alice)",
        "- 10:01:00 - Fix deployed — deploy (exit code 0)",
        "- 10:02:00 - Resolved",
    ]
    assert "- --:-- - Root cause identified — _not known to this run: fill in_" in lines


def test_the_recorded_first_alert_is_one_line() -> None:
    lines = section(render_postmortem(facts(timeline=scripted(), started_at=seconds(60), ended_at=seconds(362))),
                    "Timeline").splitlines()
    assert lines[1:3] == ["- 09:58:00 - First alert — Alert firing (opened the incident): web down",
                          "- 09:59:00 - Investigation started — application-rollback started"]
    assert sum("First alert" in line for line in lines) == 1


def test_free_text_is_escaped_and_approvers_reasons_kept() -> None:
    at = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
    entries = [
        TimelineEntry(at=at, source="prefect", kind="step", description="Step 'git checkout <commit-hash>' completed"),
        TimelineEntry(at=at, source="approver", kind="approval", description="Approved by alice (1 of 1).",
                      actor="alice", details={"reason": "v2 was *fine* <b>"}),
    ]
    markdown = render_postmortem(facts(timeline=entries, root_cause_candidates=["commit `abc` <x>"]))
    assert "git checkout &lt;commit\\-hash&gt;" in markdown or "git checkout &lt;commit-hash&gt;" in markdown
    assert "reason: “v2 was \\*fine\\* &lt;b&gt;”" in markdown
    assert "- commit \\`abc\\` &lt;x&gt;" in markdown


def test_timeline_across_midnight_shows_dates() -> None:
    late = datetime(2024, 5, 1, 23, 50, tzinfo=timezone.utc)
    markdown = render_postmortem(
        facts(first_alert_at=late, started_at=late, ended_at=late + timedelta(hours=2, minutes=5), timeline=[], response_at=late)
    )
    assert "- 2024-05-01 23:50:00 - First alert" in markdown
    assert "- 2024-05-02 01:55:00 - Resolved" in markdown
    assert "**Duration:** 2 h 5 min 0 s (2024-05-01 23:50:00–2024-05-02 01:55:00 UTC" in markdown


def test_what_the_run_cannot_know_is_said_plainly() -> None:
    markdown = render_postmortem(facts())

    assert section(markdown, "Root Cause") == (
        "_Not known to this run: fill in root cause (the run records what was done, not why it broke)._"
    )
    assert "_Not known to this run" in section(markdown, "Prevention")
    assert "**Impact:** _Not known to this run" in markdown
    assert section(markdown, "Action Items").split("\n\n") == [
        "- [ ] _Not known to this run: fill in action items_ - Owner: to assign - Due date: to set",
        "> **Incomplete: a post-mortem is required for SEV-1.** Missing from the incident commander: root cause, "
        "impact, prevention, action items. Add them with `sevflow postmortem INC-42 --edit`.",
    ]


def test_what_people_filled_in_is_used() -> None:
    markdown = render_postmortem(
        facts(
            root_cause="A config change removed the database pool size.",
            prevention="Validate config in CI.",
            action_items=["Add config schema check - bob - 2024-05-08", "Alert on pool exhaustion"],
        )
    )

    assert section(markdown, "Root Cause") == "A config change removed the database pool size."
    assert section(markdown, "Prevention") == "Validate config in CI."
    assert section(markdown, "Action Items").splitlines()[:2] == [
        "- [ ] Add config schema check - bob - 2024-05-08",
        "- [ ] Alert on pool exhaustion - Owner: to assign - Due date: to set",
    ]
    assert "- --:-- - Root cause identified — _time not recorded by this run: fill in_" in markdown


def test_resolution_lists_what_was_done() -> None:
    assert section(render_postmortem(facts()), "Resolution").splitlines() == [
        "- Rolled back web to good-0430 (abc1234)",
        "- Health checks passed",
        "",
        "Outcome: **resolved**.",
    ]


def test_a_rejected_change_is_documented_as_unresolved() -> None:
    markdown = render_postmortem(facts(outcome="rejected", resolution=[], timeline=[]))

    assert "first alert to end of run (rejected)" in markdown
    assert section(markdown, "Resolution").startswith("_This run made no change to fix it (outcome: rejected).")
    assert "- --:-- - Resolved — _not resolved by this run (rejected)_" in markdown
    assert not re.search(r"^- \d\d:\d\d - Resolved", markdown, re.M)


# Figures: detection, time to acknowledge / mitigate / resolve, approvals


def seconds(s: float) -> datetime:
    return ALERT + timedelta(seconds=s)


def scripted() -> list[TimelineEntry]:
    """An incident across two runs, the way incident_timeline() merges it (run ids in details)."""
    one, two = {"run": "r1", "run_name": "first"}, {"run": "r2", "run_name": "second"}
    gate = {"gate": "rollback"}
    return [
        TimelineEntry(at=seconds(0), source="alertmanager", kind="alert", description="Alert firing (opened the incident): web down",
                      details={"outcome": "started", "event": "firing"}),
        TimelineEntry(at=seconds(60), source="sevflow", kind="note", description="application-rollback started",
                      details={"milestone": "Investigation started", **one}),
        TimelineEntry(at=seconds(70), source="sevflow", kind="approval", description="Approval requested: Roll back web",
                      details={**gate, **one}),
        TimelineEntry(at=seconds(70), source="sevflow", kind="escalation", description="Notified primary (alice, bob)",
                      details={**gate, "tier": 0, **one}),
        TimelineEntry(at=seconds(90), source="approver", kind="approval", description="'mallory' may not answer this",
                      actor="mallory", details={**gate, "decision": "approve", "verdict": "ignored", "reason": "me", **one}),
        TimelineEntry(at=seconds(100), source="sevflow", kind="escalation", description="Escalated to secondary (carol)",
                      details={**gate, "tier": 1, **one}),
        TimelineEntry(at=seconds(133), source="approver", kind="approval", description="Rejected by bob: wait",
                      actor="bob", details={**gate, "decision": "reject", "verdict": "rejected", "reason": "wait <db>", **one}),
        TimelineEntry(at=seconds(140), source="sevflow", kind="note", description="Procedure ended: rejected", details=one),
        TimelineEntry(at=seconds(300), source="sevflow", kind="approval", description="Approval requested: Roll back web",
                      details={**gate, **two}),
        TimelineEntry(at=seconds(341), source="approver", kind="approval", description="Approved by alice (1 of 1).",
                      actor="alice", details={**gate, "decision": "approve", "verdict": "counted", "reason": "ok", **two}),
        TimelineEntry(at=seconds(350), source="prefect", kind="step", description="Step 'deploy' completed",
                      details={"milestone": "Fix deployed", **two}),
        TimelineEntry(at=seconds(362), source="sevflow", kind="note", description="Procedure ended: resolved",
                      details={"milestone": "Resolved", **two}),
        TimelineEntry(at=seconds(3600 + 400), source="alertmanager", kind="alert",
                      description="Alert resolved (resolved): web down", details={"outcome": "resolved", "event": "resolved"}),
    ]


def test_figures_are_computed_from_the_entries() -> None:
    figures = incident_figures(scripted(), Severity.SEV2, started_at=seconds(60))

    assert figures.detected.at == ALERT and figures.detection.startswith("Alert firing (opened the incident)")
    # The ignored answer (mallory, 90 s) is no acknowledgement; bob's rejection is.
    assert figures.acknowledged.since_detection == timedelta(seconds=133)
    assert figures.acknowledged.entry is not None and figures.acknowledged.entry.actor == "bob"
    assert figures.mitigated.since_detection == timedelta(seconds=350)
    # The alert's own resolution is not the incident's.
    assert figures.resolved.since_detection == timedelta(seconds=362)
    assert figures.target == timedelta(hours=1)


def test_every_gate_with_its_wait_answers_and_pages() -> None:
    first, second = gate_figures(scripted())

    assert (first.run, first.decision, first.waited) == ("first", "rejected", timedelta(seconds=63))
    assert [a.actor for a in first.answers] == ["mallory", "bob"]
    assert [(p.tier, p.at, p.who) for p in first.pages] == [
        (0, seconds(70), "Notified primary (alice, bob)"), (1, seconds(100), "Escalated to secondary (carol)")]
    assert (second.run, second.decision, second.waited) == ("second", "approved", timedelta(seconds=41))


def test_a_gate_needing_two_approvals_waits_until_the_second() -> None:
    gate = {"gate": "g"}
    entries = [
        TimelineEntry(at=seconds(0), source="sevflow", kind="approval", description="asked", details=gate),
        TimelineEntry(at=seconds(5), source="approver", kind="approval", description="1 of 2", actor="a",
                      details={**gate, "verdict": "counted"}),
        TimelineEntry(at=seconds(65), source="approver", kind="approval", description="2 of 2", actor="b",
                      details={**gate, "verdict": "counted"}),
    ]
    (only,) = gate_figures(entries)
    assert (only.decision, only.waited) == ("approved", timedelta(seconds=65))
    waiting = gate_figures(entries[:1])[0]
    assert (waiting.decision, waiting.waited) == ("waiting", None)


def test_without_an_alert_detection_is_the_run_start_and_unrecorded_figures_say_so() -> None:
    figures = incident_figures([], Severity.SEV3, started_at=seconds(60))
    assert figures.detected.at == seconds(60) and figures.detection == "start of run (no alert recorded)"
    assert figures.acknowledged.at is None and figures.mitigated.at is None and figures.resolved.at is None
    markdown = render_postmortem(facts(severity=Severity.SEV3, timeline=[], first_alert_at=None))
    assert "- **Time to acknowledge:** not recorded" in markdown
    assert "_No approval gate was opened._" in markdown


def test_postmortem_shows_the_figures_to_the_second_against_the_target() -> None:
    markdown = render_postmortem(facts(severity=Severity.SEV2, timeline=scripted(), started_at=seconds(60),
                                       ended_at=seconds(362)))
    response = section(markdown, "Detection and Response")
    assert "Response target for this severity: Within 1 hour." in response
    assert "- **Detected:** 2024-05-01 09:58:00 — Alert firing (opened the incident): web down" in response
    assert ("- **Time to acknowledge:** 2 min 13 s (10:00:13 UTC, “Rejected by bob: wait”), "
            "within the 1 h 0 min 0 s target") in response
    assert "- **Time to mitigate:** 5 min 50 s (10:03:50 UTC" in response
    assert "- **Time to resolve:** 6 min 2 s (10:04:02 UTC" in response
    approvals = section(markdown, "Approvals").splitlines()
    assert approvals[0] == ("- **Gate `rollback`** of run `first`: asked 2024-05-01 09:59:10; rejected "
                            "2024-05-01 10:00:13 after waiting 1 min 3 s")
    assert "  - paged tier 1 at 2024-05-01 09:59:40: Escalated to secondary (carol)" in approvals
    assert any(line.startswith("  - 2024-05-01 10:00:13 bob answered reject → rejected (1 min 3 s after the request), "
                               "reason “wait &lt;db&gt;”") for line in approvals)
    assert any("mallory answered approve → ignored" in line for line in approvals)


def test_a_figure_past_the_target_says_by_how_much() -> None:
    late = [TimelineEntry(at=seconds(3725), source="approver", kind="approval", description="Approved", actor="a",
                          details={"gate": "g", "verdict": "counted"})]
    markdown = render_postmortem(facts(severity=Severity.SEV2, timeline=late))
    assert "over the 1 h 0 min 0 s target by 2 min 5 s" in markdown


# Checklists


def ticks_of(markdown: str) -> dict[str, str]:
    """Item → "" when unticked, else what follows it (its evidence)."""
    found = re.findall(r"^- \[( |x)\] (.+?)(?: — (.*))?$", markdown, re.M)
    return {text: (rest if mark == "x" else "") for mark, text, rest in found}


def edit(**overrides: object) -> PostmortemEdit:
    values: dict[str, object] = dict(
        by="carol", at=seconds(7200), root_cause="Release 2.1 dropped the pool size.", impact="Checkout failed for 6 min",
        prevention="Schema check in CI", action_items=[ActionItem.parse("Add schema check;bob;2024-05-08")])
    values.update(overrides)
    return PostmortemEdit(**values)  # type: ignore[arg-type]


def test_checklists_tick_only_what_the_record_proves_with_its_evidence() -> None:
    record = facts(severity=Severity.SEV2, timeline=scripted(), started_at=seconds(60), ended_at=seconds(362),
                   run_url=None)
    markdown = render_checklists(record, artifact="inc-42-postmortem")

    assert "### Immediate (Within 1 Hour)" in markdown and "### Follow-Up (Within 24 Hours)" in markdown
    ticks = ticks_of(markdown)
    assert list(ticks) == [*IMMEDIATE_CHECKLIST, *FOLLOW_UP_CHECKLIST]
    assert {item: bool(evidence) for item, evidence in ticks.items()} == {
        "Incident documented": True, "Timeline created": True, "Root cause identified": False,
        "Immediate fix applied": True, "System verified working": True, "Full post-mortem written": False,
        "Action items identified": False, "Prevention measures planned": False, "Monitoring updated": False,
        "Team notified": True,
    }
    assert ticks["Incident documented"] == "evidence: artifact `inc-42-postmortem`"
    assert ticks["Timeline created"] == ("evidence: 13 entries, 2024-05-01 09:58:00 to 2024-05-01 11:04:40 UTC "
                                         "(artifact `inc-42-postmortem`)")
    # Each entry links to the run that wrote it.
    assert ticks["Immediate fix applied"] == "evidence: entry 2024-05-01 10:03:50 UTC “Step 'deploy' completed”"
    assert ticks["System verified working"] == "evidence: entry 2024-05-01 10:04:02 UTC “Procedure ended: resolved”"
    assert ticks["Team notified"] == "evidence: entry 2024-05-01 09:59:10 UTC “Notified primary (alice, bob)”"
    assert "_Due by 2024-05-01 11:04:02 UTC._" in markdown and "_Due by 2024-05-02 10:04:02 UTC._" in markdown
    assert "still missing: root cause, impact, prevention, action items" in markdown


def test_evidence_links_the_run_of_the_entry() -> None:
    entries = [TimelineEntry(at=seconds(5), source="prefect", kind="step", description="Step 'deploy' completed",
                             details={"milestone": "Fix deployed", "run_url": "http://127.0.0.1:4200/runs/flow-run/r2"})]
    ticks = ticks_of(render_checklists(facts(timeline=entries)))
    assert ticks["Immediate fix applied"] == (
        "evidence: [entry 2024-05-01 09:58:05 UTC “Step 'deploy' completed”](http://127.0.0.1:4200/runs/flow-run/r2)")


def test_a_failed_notification_does_not_prove_the_team_was_told() -> None:
    entries = [TimelineEntry(at=seconds(5), source="sevflow", kind="escalation", details={"gate": "g", "tier": 0},
                             description="Notified primary; NOTIFICATION FAILED via ops-slack: 500")]
    assert ticks_of(render_checklists(facts(timeline=entries)))["Team notified"] == ""


def test_the_commanders_edit_proves_the_follow_up_items() -> None:
    record = apply_edit(facts(severity=Severity.SEV1, timeline=scripted(), ended_at=seconds(362)), edit())
    markdown = render_checklists(record)
    ticks = ticks_of(markdown)
    proof = "evidence: post-mortem edited by carol at 2024-05-01 11:58:00 UTC"
    assert ticks["Root cause identified"] == proof and ticks["Full post-mortem written"] == proof
    assert ticks["Prevention measures planned"] == proof
    assert ticks["Action items identified"] == "evidence: 1 with owner and due date; post-mortem edited by carol at 2024-05-01 11:58:00 UTC"
    assert "A post-mortem is required for SEV-1** (Critical (Production Down)): complete." in markdown
    postmortem = render_postmortem(record)
    assert section(postmortem, "Root Cause").startswith("Release 2.1 dropped the pool size.")
    assert "**Impact:** Checkout failed for 6 min" in postmortem
    assert section(postmortem, "Action Items") == "- [ ] Add schema check - bob - 2024-05-08"  # complete: no note


def test_an_action_item_without_owner_or_date_leaves_the_post_mortem_incomplete() -> None:
    record = apply_edit(facts(severity=Severity.SEV2), edit(action_items=[ActionItem.parse("Alert on pool;;")]))
    ticks = ticks_of(render_checklists(record))
    assert ticks["Action items identified"] == "" and ticks["Full post-mortem written"] == ""
    assert "still missing: owner and due date of action item “Alert on pool”" in render_checklists(record)
    assert section(render_postmortem(record), "Action Items").split("\n\n") == [
        "- [ ] Alert on pool - Owner: to assign - Due date: to set",
        "> **Incomplete: a post-mortem is required for SEV-2.** Missing from the incident commander: owner and due "
        "date of action item “Alert on pool”. Add them with `sevflow postmortem INC-42 --edit`.",
    ]


def test_an_optional_post_mortem_has_no_incomplete_note() -> None:
    assert "Incomplete" not in render_postmortem(facts(severity=Severity.SEV3))


def test_unproven_items_past_their_deadline_are_overdue() -> None:
    record = facts(timeline=scripted(), ended_at=seconds(362))
    within = ticks_of(render_checklists(record, now=seconds(362 + 3599)))
    assert "OVERDUE" not in render_checklists(record, now=seconds(362 + 3599)) and within["Root cause identified"] == ""
    after_an_hour = render_checklists(record, now=seconds(362 + 3601))
    assert "- [ ] Root cause identified — **OVERDUE** (due 2024-05-01 11:04:02 UTC)" in after_an_hour
    assert "- [ ] Full post-mortem written\n" in after_an_hour  # due in 24 h: not yet overdue
    after_a_day = render_checklists(record, now=seconds(362 + 86401))
    assert "- [ ] Full post-mortem written — **OVERDUE** (due 2024-05-02 10:04:02 UTC)" in after_a_day
    assert "- [x] Immediate fix applied — evidence:" in after_a_day  # proven items are never overdue


# Follow-up


def test_follow_up_wants_a_complete_post_mortem_where_one_is_required() -> None:
    assert follow_up_findings(Severity.SEV2, None) == ["root cause", "impact", "prevention", "action items"]
    assert follow_up_findings(Severity.SEV1, edit(prevention=" ")) == ["prevention"]
    assert follow_up_findings(Severity.SEV1, edit()) == []
    # Below SEV-2 the post-mortem is optional; an action item still needs an owner and a date.
    assert follow_up_findings(Severity.SEV3, None) == []
    assert follow_up_findings(Severity.SEV3, edit(action_items=[ActionItem.parse("Alert on pool;bob")])) == [
        "owner and due date of action item “Alert on pool”"]


def test_follow_up_message_says_what_is_missing_and_how_to_add_it() -> None:
    subject, body = follow_up_message("INC-42", Severity.SEV2, "web", ["impact", "prevention"], "http://ui/run/1")
    assert subject == "[SEV-2] Post-incident follow-up for INC-42 (web): post-mortem incomplete"
    assert body.splitlines()[2:] == ["Still missing from the post-mortem:", "- impact", "- prevention", "",
                                     "Add them with: sevflow postmortem INC-42 --edit", "Incident run: http://ui/run/1"]


def test_overdue_works_with_prefects_datetime() -> None:
    from prefect.types._datetime import DateTime

    ended = DateTime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)  # as the API returns a run's end_time
    assert "OVERDUE" in render_checklists(facts(ended_at=ended), now=ended + timedelta(hours=2))


@pytest.mark.parametrize("text", ["", ";bob;2024-05-08", "a;b;c;d", "fix;bob;08/05/2024"])
def test_a_malformed_action_item_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="what;owner;YYYY-MM-DD|is not YYYY-MM-DD"):
        ActionItem.parse(text)


def test_checklists_refuse_an_item_the_runbook_does_not_have() -> None:
    with pytest.raises(ValueError, match="Timeline written"):
        render_checklists(facts(), {"Timeline written"})


@pytest.mark.parametrize(
    ("severity", "note"),
    [
        (Severity.SEV1, "A post-mortem is required for SEV-1"),
        (Severity.SEV2, "A post-mortem is required for SEV-2"),
        (Severity.SEV3, "A post-mortem is optional for SEV-3"),
    ],
)
def test_checklists_say_whether_a_postmortem_is_required(severity: Severity, note: str) -> None:
    assert note in render_checklists(facts(severity=severity), set())


def test_records_imports_no_io_library() -> None:
    code = (
        "import sys, sevflow.records; "
        "loaded = [m for m in ('prefect', 'httpx', 'psycopg', 'boto3', 'git') if m in sys.modules]; "
        "print(','.join(loaded))"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_health_before_and_after_are_in_resolution_escaped_and_say_when_not_checked() -> None:
    both = section(render_postmortem(facts(health_before="Outage confirmed: /api/<health> 503",
                                           health_after="healthy from every source")), "Resolution")
    assert "- **Health before:** Outage confirmed: /api/&lt;health&gt; 503" in both
    assert "- **Health after:** healthy from every source" in both
    after_only = section(render_postmortem(facts(health_after="http://x/health → 200")), "Resolution")
    assert "- **Health before:** not checked by this run" in after_only
    assert "**Health" not in section(render_postmortem(facts()), "Resolution")
