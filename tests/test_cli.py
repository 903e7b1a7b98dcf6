"""The `sevflow` command line, run as a person runs it, against the session's server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import Service, wait_final, wait_paused


def sevflow(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevflow", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ) | stack.env(), stdin=subprocess.DEVNULL)


def test_run_pending_approve_through_the_cli(service: Service, worker, stack) -> None:
    started = sevflow(stack, "run", "application-rollback", "--param", f"service={service.name}",
                      "--param", f"policy={service.policy}", "--param", "severity=SEV-2")
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"flow run ([0-9a-f-]{36})", started.stdout).group(1)
    assert f"/runs/flow-run/{run_id}" in started.stdout
    wait_paused(run_id)

    pending = sevflow(stack, "pending")
    assert pending.returncode == 0 and run_id[-8:] in pending.stdout  # its short id
    assert "alice" in pending.stdout and "Roll back" in pending.stdout

    from sevflow.tasks.orchestrator import read_record

    digest = read_record(run_id, "sevflow-gate-rollback-request")["digest"]
    wide = subprocess.run([sys.executable, "-m", "sevflow", "pending"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ) | stack.env() | {"COLUMNS": "300"}, stdin=subprocess.DEVNULL)
    assert f"(plan {digest[:12]})" in wide.stdout
    before = service.repo.snapshot()
    refused = sevflow(stack, "approve", run_id, "--as", "mallory", "--reason", "let me")
    assert refused.returncode == 1 and "may not approve" in refused.stderr

    wait_paused(run_id, gate_answer=2)
    assert service.repo.snapshot() == before  # the refused answer changed nothing
    approved = sevflow(stack, "approve", run_id, "--as", "alice", "--reason", "v2 is good")
    assert approved.returncode == 0, approved.stderr
    assert wait_final(run_id).state.type.value == "COMPLETED"

    again = sevflow(stack, "approve", run_id, "--as", "alice", "--reason", "again")
    assert again.returncode == 1 and "not waiting at a gate" in again.stderr


def test_cli_refuses_bad_input_with_clear_messages(stack) -> None:
    unknown = sevflow(stack, "run", "fix-everything")
    assert unknown.returncode == 2 and "unknown procedure 'fix-everything'" in unknown.stderr
    assert "application-rollback" in unknown.stderr
    missing = sevflow(stack, "run", "application-rollback")
    assert missing.returncode == 2 and "service=" in missing.stderr
    extra = sevflow(stack, "run", "application-rollback", "--param", "service=x", "--param", "colour=red")
    assert extra.returncode == 2 and "no parameter colour" in extra.stderr
    malformed = sevflow(stack, "run", "application-rollback", "--param", "service")
    assert malformed.returncode == 2 and "key=value" in malformed.stderr
    nobody = sevflow(stack, "approve", "00000000-0000-0000-0000-000000000000", "--as", "a", "--reason", "b")
    assert nobody.returncode == 1 and "No flow run" in nobody.stderr


def test_the_cli_fits_an_80_column_terminal_and_takes_short_ids(service: Service, worker, stack) -> None:
    started = sevflow(stack, "run", "application-rollback", "--param", f"service={service.name}",
                      "--param", f"policy={service.policy}")
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"flow run ([0-9a-f-]{36})", started.stdout).group(1)
    # The command to copy is on one line, unbroken (output that is not a terminal is 80 wide).
    assert f"sevflow approve {run_id} --as NAME --reason TEXT" in started.stdout.splitlines()[-1]
    wait_paused(run_id)

    pending = sevflow(stack, "pending")
    assert pending.returncode == 0, pending.stderr
    assert all(len(line) <= 80 for line in pending.stdout.splitlines() if "│" in line or "┃" in line)
    short = run_id[-8:]
    assert any(re.search(rf"[│┃] {short} +[│┃]", line) for line in pending.stdout.splitlines()), pending.stdout

    ambiguous = sevflow(stack, "approve", "zzzz", "--as", "alice", "--reason", "x")
    assert ambiguous.returncode == 2 and "short id" in ambiguous.stderr
    approved = sevflow(stack, "approve", short, "--as", "alice", "--reason", "v2 is good")
    assert approved.returncode == 0, approved.stderr
    assert "Approved" in approved.stdout or "approved" in approved.stdout.lower()
    assert wait_final(run_id).state.type.value == "COMPLETED"


def test_status_lists_server_workers_intake_and_watcher(worker, stack) -> None:
    from sevflow.flows.approval_escalation import approval_escalation

    approval_escalation()  # a pass of the watcher, as a worker starts one when an escalation is due
    shown = sevflow(stack, "status", "--intake-url", "http://127.0.0.1:9")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"Prefect server  {stack.api_url}: healthy" in text
    assert re.search(r"served application-rollback/Rollback: Application: polled \d+ s ago", text), text
    assert "Intake          http://127.0.0.1:9: not answering" in text
    assert re.search(r"Watcher +last escalation run \d+ s ago: Completed", text), text
    assert "Answered, not yet resumed:" in text


def test_postmortem_edit_misuse_is_refused_before_anything_is_read_or_stored(tmp_path) -> None:
    # No server at all: each of these must stop on the command line, with what to do instead.
    env = dict(os.environ) | {"PREFECT_API_URL": "http://127.0.0.1:9/api", "COLUMNS": "250"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sevflow", "postmortem", "inc-1", *args], capture_output=True,
                              text=True, timeout=120, env=env, stdin=subprocess.DEVNULL, cwd=tmp_path)

    without_edit = cli("--root-cause", "x")
    assert without_edit.returncode == 2 and "go with --edit" in without_edit.stderr
    no_terminal = cli("--edit")
    assert no_terminal.returncode == 2 and "asks its questions on a terminal" in no_terminal.stderr
    bad_item = cli("--edit", "--as", "carol", "--action", "fix;bob;tomorrow")
    assert bad_item.returncode == 1 and "due date 'tomorrow' is not YYYY-MM-DD" in bad_item.stderr
    nobody = cli("--edit", "--root-cause", "x")
    assert nobody.returncode == 1 and "say who you are with --as NAME" in nobody.stderr
