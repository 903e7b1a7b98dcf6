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
    PostmortemFacts,
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
    assert headings == ["Incident Summary", "Timeline", "Root Cause", "Resolution", "Prevention", "Action Items"]
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
    assert section(markdown, "Action Items") == (
        "- [ ] _Not known to this run: fill in action items_ - Owner: to assign - Due date: to set"
    )


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
    assert section(markdown, "Action Items").splitlines() == [
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


# Checklists


def test_checklists_tick_what_the_run_proved() -> None:
    markdown = render_checklists(facts(), {"Incident documented", "Timeline created", "System verified working"})

    assert "### Immediate (Within 1 Hour)" in markdown and "### Follow-Up (Within 24 Hours)" in markdown
    ticks = dict((text, mark == "x") for mark, text in re.findall(r"^- \[( |x)\] (.+)$", markdown, re.M))
    assert list(ticks) == [*IMMEDIATE_CHECKLIST, *FOLLOW_UP_CHECKLIST]
    assert [item for item, ticked in ticks.items() if ticked] == [
        "Incident documented",
        "Timeline created",
        "System verified working",
    ]
    assert "_Due by 2024-05-01 11:02:00 UTC._" in markdown
    assert "_Due by 2024-05-02 10:02:00 UTC._" in markdown


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
