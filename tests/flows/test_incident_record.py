"""The incident record across runs: one timeline, a post-mortem from durable records, unchanged
after Prefect's events are gone. Real server (PostgreSQL), worker, repository and CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import psycopg
import pytest

from sevflow.gate import AnswerRefused, answer_gate
from tests.conftest import Service, start, wait_final, wait_paused
from tests.support.stack import PG_DSN


def sevflow(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevflow", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ) | stack.env() | {"COLUMNS": "250"}, stdin=subprocess.DEVNULL)


def test_one_timeline_and_post_mortem_across_runs_that_outlive_the_events(service: Service, worker, stack) -> None:
    incident = f"inc-test-{uuid.uuid4().hex[:8]}"
    # First run: an ignored answer, then a rejection with a reason.
    first = start("application-rollback", service=service.name, policy=service.policy, incident_id=incident,
                  severity="SEV-2")
    wait_paused(first)
    with pytest.raises(AnswerRefused):
        answer_gate(first, "approve", "mallory", "let me <b>in</b>")
    wait_paused(first, gate_answer=2)
    answer_gate(first, "reject", "bob", "wait for the `db` team")
    assert wait_final(first).state.name == "Rejected"
    # A retry on the same incident, approved.
    second = start("application-rollback", service=service.name, policy=service.policy, incident_id=incident,
                   severity="SEV-2")
    wait_paused(second)
    answer_gate(second, "approve", "alice", "v2 was healthy")
    assert wait_final(second).state.type.value == "COMPLETED"

    listed = sevflow(stack, "incidents")
    assert listed.returncode == 0 and incident in listed.stdout

    timeline = sevflow(stack, "timeline", incident)
    assert timeline.returncode == 0, timeline.stderr
    lines = timeline.stdout.splitlines()
    stamps = [line[:19] for line in lines]
    assert stamps == sorted(stamps) and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", s) for s in stamps)
    text = timeline.stdout
    phrases = ["may not approve", "Rejected by bob", "Procedure ended: rejected", "Approved by alice",
               "Step 'deploy' completed", "Procedure ended: resolved"]
    assert all(p in text for p in phrases), text
    order = [text.index(p) for p in phrases]
    assert order == sorted(order)
    assert len({line.split("  ")[1] for line in lines}) == 2  # entries of both runs

    postmortem = sevflow(stack, "postmortem", incident)
    assert postmortem.returncode == 0, postmortem.stderr
    md = postmortem.stdout
    assert "Rejected by bob: wait for the \\`db\\` team" in md and "reason: “v2 was healthy”" in md
    assert "&lt;b&gt;in&lt;/b&gt;" in md and "<b>" not in md
    # The response is the first answer that decided something (bob's rejection), not mallory's.
    rejected_at = next(line for line in lines if "Rejected by bob" in line)[11:19]
    assert f"to first response ({rejected_at} UTC)" in md

    # Prefect keeps events 7 days: with every event gone, the record reads the same.
    with psycopg.connect(PG_DSN.rsplit("/", 1)[0] + f"/{stack.database}", autocommit=True) as conn:
        conn.execute("DELETE FROM event_resources")
        deleted = conn.execute("DELETE FROM events").rowcount
    assert deleted > 0
    assert sevflow(stack, "timeline", incident).stdout == timeline.stdout
    again = sevflow(stack, "postmortem", incident).stdout
    assert again == md

    missing = sevflow(stack, "timeline", "inc-nothing")
    assert missing.returncode == 1 and "No runs of incident 'inc-nothing'" in missing.stderr
