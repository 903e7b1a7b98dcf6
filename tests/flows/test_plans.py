"""An approval approves one exact plan, and nothing else runs.

Real Prefect server and worker, real git repositories, the real local app. Each test edits
the world while a gate waits (or after it was answered) and compares a full snapshot of the
target before and after.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from sevflow.gate import answer_gate
from sevflow.models import Plan
from tests.conftest import Service, read_run, start, wait_final, wait_paused
from tests.support.repos import git
from tests.support.wait import until


def world(service: Service) -> dict[str, Any]:
    """Everything a rollback could change: the repository (refs, index, files) and every file the
    app's deploy folder holds (what runs, deploys, builds, reloads)."""
    deployed = {p.name: p.read_bytes() for p in sorted(service.repo.deploy_dir.iterdir()) if p.is_file()}
    return {"repo": service.repo.snapshot(), "deployed": deployed}


def records(run_id: str) -> dict[str, Any]:
    from sevflow.tasks.orchestrator import read_records

    return read_records(run_id)


def drift_lines(run_id: str) -> list[str]:
    return [v["description"] for k, v in records(run_id).items() if k.endswith("-drift")]


def pause_key(run_id: str) -> str:
    return str(read_run(run_id).state.state_details.pause_key)


def resume_with(run_id: str, **run_input: Any) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.request("POST", "/flow_runs/{id}/resume", path_params={"id": run_id},
                              json={"run_input": run_input}).json()


def paused_or_final(run_id: str, key: str) -> Any:
    def settled(run: Any) -> bool:
        state = run.state
        return bool(state and (state.is_final() or (state.type.value == "PAUSED"
                                                    and str(state.state_details.pause_key) == key)))
    return until(lambda: (lambda r: r if settled(r) else None)(read_run(run_id)), timeout=90,
                 what=f"the run to ask again ({key}) or end")


# Each field of the service target edited while the gate waits; the value it gets.
EDITS: dict[str, Callable[[Service], dict[str, Any]]] = {
    "deploy_command": lambda s: {"deploy_command": f"echo hacked > {s.repo.deploy_dir}/current"},
    "build_command": lambda s: {"build_command": f"echo other-build >> {s.repo.deploy_dir}/builds.log"},
    "repository": lambda s: {"repository": str(s.repo.path.parent / "elsewhere")},
    "branch": lambda s: {"branch": "release"},
    "health_check_urls": lambda s: {"health_check_urls": [s.app.health_url + "?other"]},
    "config_files": lambda s: {"config_files": ["config/other.env"]},
    "reload_command": lambda s: {"reload_command": f"echo hacked > {s.repo.deploy_dir}/app.env"},
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_a_block_edited_while_the_gate_waits_changes_nothing(field: str, service: Service, worker) -> None:
    procedure, gate = (("configuration-rollback", "config") if field in ("config_files", "reload_command")
                       else ("application-rollback", "rollback"))
    run_id = start(procedure, service=service.name, policy=service.policy)
    wait_paused(run_id)
    before = world(service)

    service.save_target(**EDITS[field](service))
    verdict = answer_gate(run_id, "approve", "alice", "approved the plan I was shown")
    assert "Approved by alice" in verdict

    # The approved plan no longer holds: nothing of it ran, the drift is on the timeline, and the
    # run asks again about the new plan (or stops, if no plan can be made from the edited block).
    run = paused_or_final(run_id, f"{gate}-2-answer-1")
    assert world(service) == before
    [drift] = drift_lines(run_id)
    assert field in drift and "nothing was changed" in drift
    if not run.state.is_final():
        answer_gate(run_id, "reject", "bob", "not the plan we discussed")
        assert wait_final(run_id).state.name == "Rejected"
    else:
        assert run.state.type.value == "FAILED"
    assert world(service) == before


def test_head_moved_after_approval_is_refused(service: Service, worker) -> None:
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
    worker.kill_9()  # the answer is given while no worker runs; HEAD moves before one starts
    try:
        assert answer_gate(run_id, "approve", "alice", "v2 was fine", wait_seconds=0).startswith("answer delivered")
        service.repo.commit("hotfix", {"hotfix.txt": "made by hand\n"}, "Hotfix by hand during the incident")
        before = world(service)
    finally:
        worker.start()
        worker.wait_ready(worker.env["PREFECT_API_URL"])
    run = paused_or_final(run_id, "rollback-2-answer-1")
    assert not run.state.is_final(), run.state.message
    assert world(service) == before
    [drift] = drift_lines(run_id)
    assert "moved from" in drift and "Hotfix by hand" in drift
    answer_gate(run_id, "reject", "bob", "stop")
    assert wait_final(run_id).state.name == "Rejected"
    assert world(service) == before


def test_an_answer_for_plan_a_is_not_counted_for_plan_b(service: Service, worker) -> None:
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
    plan_a = _request(run_id, "rollback")["digest"]
    service.save_target(health_check_urls=[service.app.health_url + "?b"])
    answer_gate(run_id, "approve", "alice", "for plan A")
    paused_or_final(run_id, "rollback-2-answer-1")
    plan_b = _request(run_id, "rollback-2")["digest"]
    assert plan_a != plan_b

    # An answer written straight to the API for plan A, at plan B's gate: recorded, ignored.
    answered = resume_with(run_id, decision="approve", approver="alice", reason="replayed", plan_digest=plan_a)
    assert answered["status"] == "ACCEPT"
    wait_paused(run_id, gate_answer=2)
    entry = records(run_id)["sevflow-record-rollback-2-01-answer"]
    assert entry["details"]["verdict"] == "ignored" and plan_b[:12] in entry["description"]
    assert service.app.deployed() == "version 3 unhealthy"

    # Answered for plan B, plan B runs: its health URL is the one verified.
    answer_gate(run_id, "approve", "alice", "for plan B")
    final = wait_final(run_id)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert service.app.deployed() == "version 2 healthy"
    assert len((service.repo.deploy_dir / "deploys.log").read_text().split()) == 1


def _request(run_id: str, gate: str) -> dict:
    from sevflow.tasks.orchestrator import read_record

    return read_record(run_id, f"sevflow-gate-{gate}-request")


@pytest.mark.parametrize("attempt", range(3))
def test_watcher_expiry_racing_a_person_runs_the_change_at_most_once(attempt: int, service: Service, worker) -> None:
    from sevflow.flows.approval_escalation import approval_escalation

    service.save_policy(tiers=[0.2])
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
    request = _request(run_id, "rollback")
    from datetime import datetime, timedelta, timezone

    due = datetime.fromisoformat(request["opened_at"]) + timedelta(seconds=0.2)
    until(lambda: datetime.now(timezone.utc) > due, interval=0.05, what="the last tier's time to pass")

    barrier = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def person() -> None:
        barrier.wait()
        outcomes["person"] = resume_with(run_id, decision="approve", approver="alice", reason="go",
                                         plan_digest=request["digest"])["status"]

    def watcher() -> None:
        barrier.wait()
        outcomes["watcher"] = approval_escalation().get(run_id)

    # Each thread runs in a copy of this context: the session's Prefect settings (the API URL)
    # live in context variables, which new threads do not inherit.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(fn,)) for fn in (person, watcher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = wait_final(run_id)
    deploys = service.repo.deploy_dir / "deploys.log"
    deployed = deploys.read_text().split() if deploys.exists() else []
    # Exactly one of the two answers was taken, and the run acted on that one only.
    taken = [who for who, result in outcomes.items() if result in ("ACCEPT", "expired")]
    assert len(taken) == 1, outcomes
    if taken == ["person"]:
        assert final.state.type.value == "COMPLETED" and len(deployed) == 1
    else:
        assert final.state.name == "AwaitingHumanDecision" and deployed == []
    answers = [k for k in records(run_id) if re.search(r"rollback-\d+-answer$", k)]
    assert len(answers) == 1


def test_sevflow_plan_prints_the_plan_and_changes_nothing(service: Service, stack) -> None:
    before = world(service)
    env = dict(os.environ) | stack.env()
    shown = subprocess.run([sys.executable, "-m", "sevflow", "plan", "application-rollback", "--param",
                            f"service={service.name}", "--param", f"policy={service.policy}"],
                           capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stderr
    found = re.search(r"would ask about plan ([0-9a-f]{64})", shown.stdout)
    assert found, shown.stdout + shown.stderr
    digest = found.group(1)
    assert f"Plan digest:** `{digest}`" in shown.stdout.replace("\n", "")
    assert "Roll back" in shown.stdout and service.repo.commits["v2"][:12] in shown.stdout
    assert "nothing was changed" in shown.stdout.lower()

    as_json = subprocess.run([sys.executable, "-m", "sevflow", "plan", "application-rollback", "--json", "--param",
                              f"service={service.name}", "--param", f"policy={service.policy}"],
                             capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    plan = Plan.model_validate(data["plan"])
    assert plan.digest == data["digest"]  # the digest is the plan's own, recomputed here
    assert [op.op for op in plan.operations] == ["git-restore", "command", "command"]
    from sevflow.blocks import ServiceTarget

    assert plan.operation("deploy").command == ServiceTarget.load(service.name).deploy_command
    assert world(service) == before

    unknown = subprocess.run([sys.executable, "-m", "sevflow", "plan", "application-rollback", "--param",
                              "service=no-such-service"], capture_output=True, text=True, timeout=180, env=env,
                             stdin=subprocess.DEVNULL)
    assert unknown.returncode == 1 and "No service target named 'no-such-service'" in unknown.stderr


def test_a_procedure_calls_the_application_rollback_body_inside_its_own_run(service: Service, stack,
                                                                           tmp_path: Path) -> None:
    """A flow of its own (served by its own worker) rolls back through the rollback's body: the
    gate suspends the outer run, the answer resumes it, one rollback is made."""
    from tests.support.stack import ServedFlow

    served = ServedFlow("tests.support.composed:composed_rollback", "composed-rollback", stack.env(),
                        tmp_path / "composed.log")
    served.start()
    try:
        run_id = served.run(service=service.name, policy=service.policy)
        wait_paused(run_id)
        assert pause_key(run_id) == "rollback-answer-1"
        answer_gate(run_id, "approve", "alice", "composed")
        final = wait_final(run_id)
        assert final.state.type.value == "COMPLETED", final.state.message
    finally:
        served.stop()
    assert service.app.deployed() == "version 2 healthy"
    assert (service.repo.deploy_dir / "deploys.log").read_text().split() == [service.repo.head()]
    assert git(service.repo.path, "rev-list", "--count", f"{service.repo.commits['v3']}..HEAD") == "1"
    assert any(t.startswith("incident:") for t in read_run(run_id).tags)
