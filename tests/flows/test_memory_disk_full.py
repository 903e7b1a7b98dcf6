"""Memory/Disk Full on a real filesystem (a tmpfs of its own where the machine allows
mounting one) and real processes, through the real Prefect server and worker.

Each test compares a full snapshot of the tree (every entry: inode, size, mtime, content,
symlink target) and of the processes the block lets be killed, before and after.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from sevflow.gate import answer_gate
from sevflow.models import Plan
from tests.conftest import start, wait_final, wait_for
from tests.support.wait import until
from sevflow.deployments import deployment_path
from tests.support.hosts import (
    DiskWorld,
    Processes,
    host_fixture,
    prevention_in_place,
    remove_prevention,
    save_host_target,
)

GATES = ["caches", "temp-files", "kill", "prevent"]


@pytest.fixture
def host(tmp_path: Path, stack) -> Iterator[tuple[DiskWorld, Processes]]:
    yield from host_fixture(tmp_path)


@pytest.fixture
def names(stack) -> Iterator[dict[str, str]]:
    from sevflow.blocks import ApprovalPolicy, ApprovalRule

    suffix = uuid.uuid4().hex[:8]
    named = {"block": f"web-{suffix}", "policy": f"policy-disk-{suffix}"}
    ApprovalPolicy(rules=[ApprovalRule(change_kind="*", approvers=["alice", "bob"])]).save(named["policy"])
    yield named
    try:
        remove_prevention(named["block"])
    except ValueError:
        pass  # the block was never saved


def world(disk: DiskWorld, procs: Processes, block: str, rules_dir: Path) -> dict[str, Any]:
    found = prevention_in_place(block)
    return {"tree": disk.snapshot(), "processes": procs.snapshot(),
            "rules": sorted(p.name for p in rules_dir.iterdir()) if rules_dir.exists() else [],
            "automations": len(found["automations"]), "schedules": len(found["schedules"])}


def at_gate(run_id: str, gate: str) -> Any:
    key = f"{gate}-answer-1"
    return wait_for(run_id, lambda r: bool(r.state and r.state.type.value == "PAUSED"
                                             and str(r.state.state_details.pause_key) == key),
                    timeout=120, what=f"paused at gate {gate}")


def gate_plan(run_id: str, gate: str) -> Plan:
    from sevflow.tasks.orchestrator import read_record

    return Plan.model_validate(read_record(run_id, f"sevflow-gate-{gate}-request")["plan"])


def test_approved_it_frees_the_space_kills_the_leaking_process_and_adds_monitoring(host, names, worker,
                                                                                  tmp_path: Path) -> None:
    disk, procs = host
    rules_dir = tmp_path / "prometheus"
    rules_dir.mkdir()
    save_host_target(names["block"], disk, procs, rules_dir)
    before = disk.snapshot()
    hog, steady = procs.children["hog"], procs.children["steady"]
    available_before = os.statvfs(disk.root).f_bavail * os.statvfs(disk.root).f_frsize

    run_id = start("memory-disk-full", host=names["block"], policy=names["policy"])
    plans: dict[str, Plan] = {}
    for gate in GATES:
        at_gate(run_id, gate)
        plans[gate] = gate_plan(run_id, gate)
        assert "Approved by alice" in answer_gate(run_id, "approve", "alice", f"free it: {gate}", wait_seconds=60)
    final = wait_final(run_id, timeout=120)
    assert final.state.type.value == "COMPLETED", final.state.message

    # The plans named the exact files and the bytes they free; the kill plan the leaking process.
    temp_op = plans["temp-files"].operations[0]
    assert sorted(f.path for f in temp_op.files) == ["old-1.tmp", "old-2.tmp", "sub/old-3.tmp"]
    assert f"frees {temp_op.freed_bytes // 1024 // 1024}" in plans["temp-files"].title.replace(".0 MiB", "")
    assert temp_op.freed_bytes == 5 * 1024 * 1024
    kill_op = plans["kill"].operations[0]
    assert kill_op.pid == hog.pid and "leak" in plans["kill"].title
    assert [op.op for op in plans["prevent"].operations] == ["create-automation", "write-alert-rules",
                                                             "schedule-cleanup"]

    # Exactly the approved files are gone; everything else is as it was, inode for inode.
    after = disk.snapshot()
    gone = set(before) - set(after)
    assert gone == disk.expected_freed()
    assert _files_only({k: v for k, v in before.items() if k not in gone}) == _files_only(after)
    assert (disk.outside / "old-outside.tmp").exists() and (disk.outside / "secret.db").exists()
    assert os.readlink(disk.tmp / "escape") == str(disk.outside)
    assert os.statvfs(disk.root).f_bavail * os.statvfs(disk.root).f_frsize > available_before

    # The leaking process was stopped (SIGTERM), the steady one runs on.
    assert hog.wait(timeout=30) == -signal.SIGTERM
    assert steady.poll() is None

    # Prevention: the automation, the rule file and the cleanup schedule exist.
    found = prevention_in_place(names["block"])
    assert len(found["automations"]) == 1 and len(found["schedules"]) == 1
    assert found["schedules"][0].parameters["host"] == names["block"]
    # A worker restarted on the host registers its deployments again and keeps the approved schedule.
    restarted_at = datetime.now(timezone.utc)
    worker.stop()
    worker.start()
    until(lambda: _deployment(deployment_path("approval-escalation")).updated > restarted_at, timeout=120,
          what="the restarted worker to register every deployment again")
    [kept] = until(lambda: prevention_in_place(names["block"])["schedules"], timeout=60, what="the kept schedule")
    assert kept.parameters == found["schedules"][0].parameters and kept.schedule == found["schedules"][0].schedule
    [rules] = list(rules_dir.iterdir())
    assert "node_filesystem_avail_bytes" in rules.read_text() and str(disk.root) in rules.read_text()

    # What was freed, and the root cause (leak or legitimate), are in the post-mortem.
    postmortem = _postmortem(run_id)
    assert re.search(rf"pid {hog.pid} .* keeps growing .*: likely a leak", postmortem), postmortem
    assert re.search(rf"pid {steady.pid} .* is steady .*: legitimate use", postmortem), postmortem
    root_cause = postmortem.split("## Root Cause", 1)[1].split("##", 1)[0]
    assert f"pid {hog.pid}" in root_cause and "likely a leak" in root_cause
    assert "Freed 9.0 MiB (9437184 bytes): 5 file(s) deleted" in postmortem, postmortem


def test_rejected_gates_delete_and_kill_nothing(host, names, worker, tmp_path: Path) -> None:
    disk, procs = host
    rules_dir = tmp_path / "prometheus"
    rules_dir.mkdir()
    save_host_target(names["block"], disk, procs, rules_dir)
    before = world(disk, procs, names["block"], rules_dir)

    run_id = start("memory-disk-full", host=names["block"], policy=names["policy"])
    for gate in GATES:
        at_gate(run_id, gate)
        answer_gate(run_id, "reject", "bob", f"not now: {gate}", wait_seconds=60)
    final = wait_final(run_id, timeout=120)
    assert final.state.name == "Rejected", final.state.message
    assert world(disk, procs, names["block"], rules_dir) == before
    assert all(p.poll() is None for p in procs.children.values())
    assert "not now: kill" in _postmortem(run_id)


def test_an_unanswered_gate_expires_and_changes_nothing(host, names, worker, tmp_path: Path) -> None:
    from sevflow.blocks import ApprovalPolicy, ApprovalRule, EscalationTier
    from sevflow.flows.approval_escalation import approval_escalation

    disk, procs = host
    rules_dir = tmp_path / "prometheus"
    rules_dir.mkdir()
    save_host_target(names["block"], disk, procs, rules_dir)
    ApprovalPolicy(rules=[ApprovalRule(change_kind="*", approvers=["alice", "bob"])],
                   escalation={"*": [EscalationTier(name="tier 0", notify=["oncall"], wait_seconds=0.3)]},
                   ).save(names["policy"], overwrite=True)
    before = world(disk, procs, names["block"], rules_dir)

    run_id = start("memory-disk-full", host=names["block"], policy=names["policy"])
    at_gate(run_id, "caches")
    until(lambda: approval_escalation().get(run_id) == "expired", interval=0.2, what="the gate to expire")
    final = wait_final(run_id, timeout=120)
    assert final.state.name == "AwaitingHumanDecision", final.state.message
    assert "Nothing was changed" in final.state.message
    assert world(disk, procs, names["block"], rules_dir) == before
    assert all(p.poll() is None for p in procs.children.values())


def test_a_host_target_edited_while_the_gate_waits_changes_nothing(host, names, worker, tmp_path: Path) -> None:
    """The caches plan was made from the block as it was; the block is edited to clear another
    folder before the answer: the approved plan no longer holds, nothing of it runs, and the run
    asks again about the plan the edited block makes."""
    from sevflow.tasks.orchestrator import read_records

    disk, procs = host
    rules_dir = tmp_path / "prometheus"
    rules_dir.mkdir()
    save_host_target(names["block"], disk, procs, rules_dir)
    before = world(disk, procs, names["block"], rules_dir)

    run_id = start("memory-disk-full", host=names["block"], policy=names["policy"])
    at_gate(run_id, "caches")
    save_host_target(names["block"], disk, procs, rules_dir, cache_folders=[str(disk.tmp)])
    edited = world(disk, procs, names["block"], rules_dir)
    assert "Approved by alice" in answer_gate(run_id, "approve", "alice", "clear the app cache", wait_seconds=60)

    wait_for(run_id, lambda r: bool(r.state and (r.state.is_final() or (
        r.state.type.value == "PAUSED" and str(r.state.state_details.pause_key) == "caches-2-answer-1"))),
        timeout=120, what="the run to ask again about the edited block's plan")
    assert world(disk, procs, names["block"], rules_dir) == edited == before
    drift = [v["description"] for k, v in read_records(run_id).items() if k.endswith("-drift")]
    assert len(drift) == 1 and "nothing was changed" in drift[0], drift
    answer_gate(run_id, "reject", "bob", "not the plan we discussed", wait_seconds=60)
    for gate in GATES[1:]:
        at_gate(run_id, gate)
        answer_gate(run_id, "reject", "bob", "not now", wait_seconds=60)
    assert wait_final(run_id, timeout=120).state.name == "Rejected"
    assert world(disk, procs, names["block"], rules_dir) == before
    assert all(p.poll() is None for p in procs.children.values())


def test_a_symlink_out_of_the_allow_list_is_not_followed(host, names, worker, tmp_path: Path) -> None:
    """The whole allow-list is a symlink's target away from `outside`: the plan lists nothing
    behind a link, and the approved deletion leaves `outside` exactly as it was."""
    disk, procs = host
    save_host_target(names["block"], disk, procs, None, cache_folders=[], cache_commands=[], kill_candidates=[])
    outside = {k: v for k, v in disk.snapshot().items() if k.startswith("outside")}

    run_id = start("memory-disk-full", host=names["block"], policy=names["policy"])
    at_gate(run_id, "temp-files")
    plan = gate_plan(run_id, "temp-files")
    assert all("escape" not in f.path and "link" not in f.path for op in plan.operations for f in op.files)
    answer_gate(run_id, "approve", "alice", "temp only", wait_seconds=60)
    at_gate(run_id, "prevent")
    answer_gate(run_id, "reject", "alice", "not now", wait_seconds=60)
    assert wait_final(run_id, timeout=120).state.type.value == "COMPLETED"
    assert {k: v for k, v in disk.snapshot().items() if k.startswith("outside")} == outside
    assert os.path.islink(disk.tmp / "escape") and os.path.islink(disk.tmp / "old-link.tmp")


def test_dry_run_and_sevflow_plan_show_every_plan_and_change_nothing(host, names, worker, stack,
                                                                      tmp_path: Path) -> None:
    disk, procs = host
    rules_dir = tmp_path / "prometheus"
    rules_dir.mkdir()
    save_host_target(names["block"], disk, procs, rules_dir)
    before = world(disk, procs, names["block"], rules_dir)

    run_id = start("memory-disk-full", host=names["block"], policy=names["policy"], dry_run=True)
    final = wait_final(run_id, timeout=120)
    assert final.state.name == "DryRun", final.state.message
    for gate in GATES:
        assert f"gate {gate!r} would ask" in final.state.message
    assert world(disk, procs, names["block"], rules_dir) == before

    env = dict(os.environ) | stack.env()
    shown = subprocess.run([sys.executable, "-m", "sevflow", "plan", "memory-disk-full", "--param",
                            f"host={names['block']}", "--param", f"policy={names['policy']}"],
                           capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stderr
    for gate in GATES:
        assert re.search(rf"Gate '{gate}' would ask about plan [0-9a-f]{{64}}", shown.stdout), shown.stdout
    assert f"rm -- {disk.tmp}/old-1.tmp" in shown.stdout and f"kill -TERM {procs.children['hog'].pid}" in shown.stdout
    assert "frees 5.0 MiB (5242880 bytes)" in shown.stdout
    assert world(disk, procs, names["block"], rules_dir) == before

    unknown = subprocess.run([sys.executable, "-m", "sevflow", "plan", "memory-disk-full", "--param",
                              "host=no-such-host"], capture_output=True, text=True, timeout=300, env=env,
                             stdin=subprocess.DEVNULL)
    assert unknown.returncode == 1 and "No host target named 'no-such-host'" in unknown.stderr


def test_a_host_target_for_another_machine_stops_before_anything(host, names, worker) -> None:
    disk, procs = host
    save_host_target(names["block"], disk, procs, None, host="some-other-machine")
    before = disk.snapshot()
    run_id = start("memory-disk-full", host=names["block"], policy=names["policy"])
    final = wait_final(run_id, timeout=120)
    assert final.state.type.value == "FAILED"
    assert "Start a worker on some-other-machine" in final.state.message
    assert disk.snapshot() == before and all(p.poll() is None for p in procs.children.values())


def _deployment(name: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _files_only(tree: dict[str, Any]) -> dict[str, Any]:
    """The snapshot with a directory's own size and mtime left out (deleting in it changes them)."""
    return {k: ({"mode": v["mode"], "ino": v["ino"]} if (v["mode"] & 0o170000) == 0o040000 else v)
            for k, v in tree.items()}


def _postmortem(run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from uuid import UUID

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[UUID(run_id)])))
    texts = [a.data for a in artifacts if a.key and a.key.endswith("-postmortem")]
    assert texts, [a.key for a in artifacts]
    return str(texts[-1])


def test_a_disk_full_alert_starts_it_on_its_host(host, names, worker, stack, tmp_path: Path) -> None:
    """An intake rule turns a DiskFull alert into this procedure for the host its label names, at
    the rule's severity; rejected, it changes nothing."""
    import httpx

    from tests.intake.conftest import TOKENS, save_sources
    from tests.support.stack import Intake

    disk, procs = host
    rules_dir = tmp_path / "prometheus"
    rules_dir.mkdir()
    save_host_target(names["block"], disk, procs, rules_dir)
    before = world(disk, procs, names["block"], rules_dir)
    save_sources("http://127.0.0.1:9")
    rules = f"""\
rules:
  - name: disk-full
    match:
      labels: {{alertname: DiskFull}}
    procedure: memory-disk-full
    service_label: instance
    severity: SEV-2
    parameters: {{policy: {names["policy"]}}}
"""
    intake = Intake(stack.env(), tmp_path / "intake", rules, answer_wait=5.0)
    intake.start()
    try:
        alert = {"id": f"disk-{names['block']}", "summary": f"{disk.root} is 97% full",
                 "labels": {"alertname": "DiskFull", "instance": names["block"]}}
        headers = {"Authorization": f"Bearer {TOKENS['generic']}"}

        def run_of_alert() -> str | None:
            answer = httpx.post(f"{intake.url}/alerts/generic", json=alert, headers=headers, timeout=15).json()
            return answer["alerts"][0]["flow_run_id"]

        run_id = until(run_of_alert, timeout=60, what="the alert's run")
        run = at_gate(run_id, "caches")
        assert run.parameters["host"] == names["block"] and run.parameters["severity"] == "SEV-2"
        for gate in GATES:
            at_gate(run_id, gate)
            answer_gate(run_id, "reject", "bob", "handled by hand", wait_seconds=60)
        assert wait_final(run_id, timeout=120).state.name == "Rejected"
        assert world(disk, procs, names["block"], rules_dir) == before
        assert all(p.poll() is None for p in procs.children.values())
    finally:
        intake.stop()
