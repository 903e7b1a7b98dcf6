"""Who approved is proven, not typed: signed answers, no self-approval, the service's own policy.

Real Prefect server and worker, real SSH keys made with ssh-keygen, real repositories. Forged
answers are written straight into the run through the API, as anyone who reaches it could.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from sevflow import identity
from sevflow.gate import AnswerRefused, answer_gate
from sevflow.models import utcnow
from tests.conftest import Service, start, wait_final, wait_paused
from tests.flows.test_plans import _request, records, resume_with, world


def make_key(folder: Path, name: str) -> Path:
    key = folder / f"{name}_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    return {name: make_key(tmp_path, name) for name in ("alice", "bob", "mallory")}


def save_signed_policy(service: Service, keys: dict[str, Path], required: int = 1,
                       extra_keys: dict[str, Path] | None = None, approvers: list[str] | None = None) -> None:
    from sevflow.blocks import ApprovalPolicy, ApprovalRule

    listed = {"alice": keys["alice"], "bob": keys["bob"], **(extra_keys or {})}
    ApprovalPolicy(
        rules=[ApprovalRule(change_kind="*", approvers=approvers or list(listed), required_approvals=required)],
        escalation={},
        approver_keys={name: Path(f"{key}.pub").read_text() for name, key in listed.items()},
    ).save(service.policy, overwrite=True)


def last_answer(run_id: str, gate: str = "rollback") -> dict:
    found = {k: v for k, v in records(run_id).items() if re.fullmatch(rf"sevflow-record-{gate}-\d+-answer", k)}
    return found[max(found)]


def forged(run_id: str, request: dict, key: Path, **changes: str) -> dict:
    """A signed answer, made with `key`, over the fields given (defaults: this run's)."""
    fields = dict(run=run_id, gate=request["gate"], plan=request["digest"], decision="approve", approver="alice",
                  reason="forged", signed_at=utcnow().isoformat()) | changes
    signature = identity.sign(identity.answer_message(**fields), key)
    return {"decision": "approve", "approver": "alice", "reason": "forged", "plan_digest": request["digest"],
            "signature": signature, "signed_at": changes.get("signed_at", fields["signed_at"])}


def test_forged_and_unsigned_answers_are_ignored_a_signed_cli_answer_counts(service: Service, worker, stack,
                                                                           keys: dict[str, Path]) -> None:
    save_signed_policy(service, keys)
    run_id = start("application-rollback", service=service.name, policy=service.policy, severity="SEV-1")
    wait_paused(run_id)
    before = world(service)
    request = _request(run_id, "rollback")
    assert request["verified"] is True  # SEV-1 and the policy lists keys: signed answers only

    attempts = {
        "unsigned (as the UI's Resume form sends)": {"decision": "approve", "approver": "alice", "reason": "ui",
                                                     "plan_digest": request["digest"]},
        "a signature that is not one": {"decision": "approve", "approver": "alice", "reason": "x",
                                        "plan_digest": request["digest"], "signature": "garbage",
                                        "signed_at": utcnow().isoformat()},
        "signed by another key": forged(run_id, request, keys["mallory"]),
        "signed for another plan": forged(run_id, request, keys["alice"], plan="0" * 64),
        "signed for another gate": forged(run_id, request, keys["alice"], gate="config"),
        "signed for another run": forged(run_id, request, keys["alice"], run="00000000-0000-0000-0000-000000000000"),
        "signed for other words (a replay with a new reason)": forged(run_id, request, keys["alice"], reason="other"),
        "signed long ago": forged(run_id, request, keys["alice"],
                                  signed_at=(utcnow() - timedelta(hours=2)).isoformat()),
    }
    for n, (what, run_input) in enumerate(attempts.items(), start=1):
        assert resume_with(run_id, **run_input)["status"] == "ACCEPT", what
        wait_paused(run_id, gate_answer=n + 1)
        entry = last_answer(run_id)
        assert entry["details"]["verdict"] == "ignored", what
        assert "needs a signed answer" in entry["description"], (what, entry["description"])
        assert world(service) == before, what
    assert "not signed" in records(run_id)["sevflow-record-rollback-01-answer"]["description"]

    # The same answer from the CLI, signed with alice's key, counts; the change is made.
    env = dict(os.environ) | stack.env()
    done = subprocess.run([sys.executable, "-m", "sevflow", "approve", run_id, "--as", "alice", "--reason",
                           "v2 was healthy", "--key", str(keys["alice"])], capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    final = wait_final(run_id)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert last_answer(run_id)["details"]["identity"] == "signed with alice's key"
    assert service.app.deployed() == "version 2 healthy"


def test_the_requester_may_not_approve_their_own_change(service: Service, worker, stack,
                                                        keys: dict[str, Path]) -> None:
    save_signed_policy(service, keys)
    env = dict(os.environ) | stack.env()
    started = subprocess.run([sys.executable, "-m", "sevflow", "run", "application-rollback", "--param",
                              f"service={service.name}", "--param", f"policy={service.policy}", "--param",
                              "severity=SEV-1", "--as", "alice", "--key", str(keys["alice"])],
                             capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"flow run ([0-9a-f-]{36})", started.stdout).group(1)
    wait_paused(run_id)
    request = _request(run_id, "rollback")
    assert (request["requester"], request["requester_verified"]) == ("alice", True)
    before = world(service)

    with pytest.raises(AnswerRefused, match="requested this change and may not approve it"):
        answer_gate(run_id, "approve", "alice", "my own change", key=str(keys["alice"]))
    wait_paused(run_id, gate_answer=2)
    assert world(service) == before
    answer_gate(run_id, "approve", "bob", "checked it", key=str(keys["bob"]))
    assert wait_final(run_id).state.type.value == "COMPLETED"


def test_two_names_with_one_key_count_once(service: Service, worker, keys: dict[str, Path]) -> None:
    save_signed_policy(service, keys, required=2, extra_keys={"carol": keys["alice"]},
                       approvers=["alice", "bob", "carol"])
    run_id = start("application-rollback", service=service.name, policy=service.policy, severity="SEV-2")
    wait_paused(run_id)
    before = world(service)
    assert "1 of 2" in answer_gate(run_id, "approve", "alice", "yes", key=str(keys["alice"]))
    wait_paused(run_id, gate_answer=2)
    with pytest.raises(AnswerRefused, match="one key counts once"):
        answer_gate(run_id, "approve", "carol", "yes too", key=str(keys["alice"]))
    wait_paused(run_id, gate_answer=3)
    assert world(service) == before
    assert "2 of 2" in answer_gate(run_id, "approve", "bob", "agreed", key=str(keys["bob"]))
    assert wait_final(run_id).state.type.value == "COMPLETED"


def test_the_services_policy_wins_over_the_runs_parameter(service: Service, worker, keys: dict[str, Path]) -> None:
    save_signed_policy(service, keys)
    service.save_target(approval_policy=service.policy)
    # The requester picks the permissive `default` policy: the service's own (signed only) applies.
    run_id = start("application-rollback", service=service.name, policy="default", severity="SEV-1")
    wait_paused(run_id)
    before = world(service)
    with pytest.raises(AnswerRefused, match="needs a signed answer"):
        answer_gate(run_id, "approve", "alice", "unsigned")
    wait_paused(run_id, gate_answer=2)
    assert world(service) == before
    answer_gate(run_id, "reject", "bob", "not now", key=str(keys["bob"]))
    assert wait_final(run_id).state.name == "Rejected"
    assert world(service) == before
