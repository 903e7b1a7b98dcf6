"""production-system-down end to end: the session's Prefect server and worker, a real git
repository, the real local app served from it, and local HTTP services for the external probe,
the control URL, the external dependency and its standby, the users metric, the status page
and the stakeholders' notification receiver.

Each test compares a full snapshot of the world (repository, deployed files, the app's health,
the status page) before and after; before a person approves, the only outputs allowed are
messages that say a human decision is awaited.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from sevflow.gate import AnswerRefused, answer_gate
from tests.conftest import WEBHOOK_TOKEN, Service, read_run, wait_final, wait_for
from tests.support.repos import git
from tests.support.services import Answering, ProbeService, WebhookReceiver
from tests.support.wait import until
from sevflow.deployments import deployment_path

STATUS_TOKEN = "sp-tok-4c2e8a6b1d"  # a secret: must appear in no log, artifact or record
OLD = "2026-01-05T10:00:00+00:00"  # a history with no recent deploy
PROCEDURE = "production-system-down"


class Outage:
    """One service in trouble and everything around it."""

    def __init__(self, root: Path, stakeholders: WebhookReceiver, old_history: bool = False) -> None:
        self.service = Service(root, None, when=OLD if old_history else None)
        self.repo = self.service.repo
        self.app = self.service.app
        self.control = Answering(200, "control ok")
        self.payments = Answering(200, "payments ok")  # the external dependency
        self.standby = Answering(200, "standby ok")  # its standby, where failover points
        self.billing = Answering(503, "billing down")  # a service that depends on this one
        self.metric = Answering(200, json.dumps({"value": 1234}))
        self.probe = ProbeService()
        self.status_page = WebhookReceiver()
        self.stakeholders = stakeholders
        self.log = self.repo.deploy_dir / "app.log"
        self.log.write_text("GET /api/cart 200\nERROR checkout: NullPointerException in basket\nGET / 200\n")
        self.service.save_target()
        self.service.save_policy()
        self.hook = f"stakeholders-{self.service.name}"
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        CustomWebhookNotificationBlock(
            name="stakeholders", url=f"{stakeholders.url}/notify",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
            headers={"Authorization": "Bearer {{token}}"}, secrets={"token": WEBHOOK_TOKEN}, allow_private_urls=True,
        ).save(self.hook, overwrite=True)
        self.save_profile()

    @property
    def name(self) -> str:
        return self.service.name

    def save_profile(self, **overrides: Any) -> None:
        from pydantic import SecretStr

        from sevflow.blocks import OutageProfile

        fields: dict[str, Any] = dict(
            service=self.name, probe_endpoints=[self.probe.check_url], control_url=f"{self.control.url}/",
            status_page_webhook=f"{self.status_page.url}/status", status_page_token=SecretStr(STATUS_TOKEN),
            notification_blocks=[f"custom-webhook/{self.hook}"], log_file=str(self.log),
            dependencies={"payments": f"{self.payments.url}/health"},
            dependent_services={"billing": f"{self.billing.url}/health"}, users_metric_url=f"{self.metric.url}/users",
            deploy_window_seconds=3600, verify_budget_seconds=10, watch_seconds=0.6, watch_interval_seconds=0.2,
            dependency_wait_seconds=0.5, probe_timeout_seconds=3,
        )
        fields.update(overrides)
        OutageProfile(**fields).save(self.name, overwrite=True)

    def uses_payments(self) -> None:
        """The app calls the payments dependency: its health fails when payments does."""
        (self.repo.deploy_dir / "upstream.url").write_text(f"{self.payments.url}/health\n")

    def health(self) -> int:
        return httpx.get(self.app.health_url, timeout=5).status_code

    def posts(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.status_page.received]

    def notifications(self) -> list[str]:
        return [r["body"]["body"] for r in self.stakeholders.received if r["path"] == "/notify"]

    def world(self) -> dict[str, Any]:
        """The repository (refs, index, files), every file of the deploy folder, the app's
        health, and the status page as readers see it: every post except those saying a
        human decision is awaited."""
        deployed = {p.name: p.read_bytes() for p in sorted(self.repo.deploy_dir.iterdir()) if p.is_file()}
        return {"repo": self.repo.snapshot(), "deployed": deployed, "health": self.health(),
                "status_page": [p for p in self.posts() if not p.get("awaiting_human_decision")]}

    def only_awaiting_decision_was_said(self) -> None:
        posts = self.posts()
        assert posts and all(p["awaiting_human_decision"] and p["state"] == "investigating" for p in posts), posts
        notes = self.notifications()
        assert notes and all("human decision" in n for n in notes), notes

    def close(self) -> None:
        for server in (self.app, self.control, self.payments, self.standby, self.billing, self.metric, self.probe,
                       self.status_page):
            server.close()


@pytest.fixture
def outage(tmp_path: Path, stack: Any, receiver: WebhookReceiver) -> Iterator[Outage]:
    o = Outage(tmp_path, receiver)
    yield o
    o.close()


@pytest.fixture
def old_outage(tmp_path: Path, stack: Any, receiver: WebhookReceiver) -> Iterator[Outage]:
    o = Outage(tmp_path, receiver, old_history=True)
    yield o
    o.close()


# --- driving runs --------------------------------------------------------------------------


def start(o: Outage, **parameters: Any) -> str:
    from prefect.deployments import run_deployment

    params = {"service": o.name, "policy": o.service.policy, "severity": "SEV-1"} | parameters
    return str(run_deployment(deployment_path(PROCEDURE), parameters=params, timeout=0).id)


def paused_at(run_id: str, key: str) -> Any:
    return wait_for(run_id, lambda r: bool(r.state and r.state.type.value == "PAUSED"
                                             and str(r.state.state_details.pause_key) == key),
                    timeout=120, what=f"paused at {key}")


def resume_with(run_id: str, **run_input: Any) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.request("POST", "/flow_runs/{id}/resume", path_params={"id": run_id},
                              json={"run_input": run_input}).json()


def form(run_id: str) -> str:
    from prefect.input import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    run = read_run(run_id)
    return read_flow_run_input(keyset_from_paused_state(run.state)["description"], flow_run_id=run.id)


def records(run_id: str, prefix: str = "sevflow-record-") -> dict[str, Any]:
    from sevflow.tasks.orchestrator import read_records

    return read_records(run_id, prefix)


def artifacts(run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    latest: dict[str, Any] = {}
    for a in sorted(found, key=lambda a: a.created):
        if a.key:
            latest[a.key] = a
    return latest


def postmortem(run_id: str) -> str:
    return next(a.data for k, a in artifacts(run_id).items() if k.endswith("-postmortem") and not k.endswith("-incident-postmortem"))


def make_hotfix(o: Outage) -> str:
    """A fix on a branch of its own, as a developer pushes it during the incident."""
    git(o.repo.path, "checkout", "-q", "-b", "hotfix/basket")
    sha = o.repo.commit("hotfix", {"app.txt": "version 3 healthy (basket fixed)\n"}, "Fix basket NPE")
    git(o.repo.path, "checkout", "-q", "main")
    return sha


# --- the paths ------------------------------------------------------------------------------


def test_a_recent_deploy_is_rolled_back_after_approval(outage: Outage, worker: Any, stack: Any) -> None:
    o = outage
    assert o.health() == 503  # v3, committed minutes ago, is deployed and broken
    before = o.world()
    run_id = start(o, reason="checkout down after v3")
    paused_at(run_id, "rollback-answer-1")

    # Verified, assessed, told (saying a decision is awaited), diagnosed: nothing else happened.
    assert o.world() == before
    o.only_awaiting_decision_was_said()
    [post] = o.posts()
    assert post["severity"] == "SEV-1" and "users affected: 1234" in post["message"] and "billing" in post["message"]
    assert o.status_page.received[0]["headers"]["Authorization"] == f"Bearer {STATUS_TOKEN}"
    text = form(run_id)
    assert "Roll back" in text and o.repo.commits["v2"][:12] in text and "Release v3: new feature" in text
    decided = [v["description"] for k, v in records(run_id).items() if k.endswith("outage-remedy-1")]
    assert decided and "deploy(s) in the window" in decided[0] and decided[0].endswith("rollback")

    assert "Approved by alice" in answer_gate(run_id, "approve", "alice", "v3 went out just before it broke")
    final = wait_final(run_id, timeout=120)
    assert final.state.type.value == "COMPLETED", final.state.message

    # v2's tree as a new commit on top of v3, built, deployed once; healthy from every source.
    assert git(o.repo.path, "rev-parse", "HEAD^") == o.repo.commits["v3"]
    assert git(o.repo.path, "rev-parse", "HEAD^{tree}") == git(o.repo.path, "rev-parse", f"{o.repo.commits['v2']}^{{tree}}")
    assert o.app.deployed() == "version 2 healthy" and o.app.deploys() == [o.repo.head()]
    assert o.health() == 200
    assert [p["state"] for p in o.posts()] == ["investigating", "monitoring", "resolved"]
    assert not any(p["awaiting_human_decision"] for p in o.posts()[1:])
    assert "resolved" in o.notifications()[-1]

    # The post-mortem: severity, the response target and how the run met it, what was done.
    pm = postmortem(run_id)
    assert "**Severity:** SEV-1" in pm and "target Immediate, all hands; actual" in pm
    assert "Rolled" in pm and "Root cause identified" in pm and "Outcome: **resolved**" in pm
    assert "users affected: 1234" in pm
    # Health as the run's own probes saw it, before acting and after the fix was watched.
    resolution = pm.split("## Resolution", 1)[1].split("## Prevention", 1)[0]
    assert "- **Health before:** Outage confirmed from" in resolution and "failing; the control URL answers" in resolution
    assert "- **Health after:** healthy from every source that answered" in resolution
    assert "and still healthy after" in resolution
    # The runbook's steps are the run's task names.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)])))
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"VERIFY the outage", "ASSESS the scope", "COMMUNICATE", "Check logs", "Check recent deployments",
            "Check external dependencies", "git checkout <commit-hash>", "deploy", "Confirm system operational",
            "Monitor closely", "publish timeline and post-mortem"} <= names
    # No secret anywhere the run wrote.
    written = json.dumps(records(run_id)) + json.dumps({k: str(a.data) for k, a in artifacts(run_id).items()})
    assert STATUS_TOKEN not in written and WEBHOOK_TOKEN not in written
    assert STATUS_TOKEN not in (stack.home / "worker.log").read_text()


@pytest.mark.parametrize("why", ["healthy", "local problem"])
def test_not_an_outage_ends_saying_so_and_changes_nothing(why: str, outage: Outage, worker: Any) -> None:
    o = outage
    if why == "healthy":
        (o.repo.deploy_dir / "current").write_text("version 2 healthy\n")
    else:
        o.control.status = 500  # this machine cannot even reach the control URL
    before = o.world()
    final = wait_final(start(o), timeout=120)
    assert final.state.type.value == "COMPLETED" and final.state.name == "NotAnOutage", final.state.message
    assert ("sees the service healthy" if why == "healthy" else "local problem") in final.state.message
    assert "Nothing was changed" in final.state.message
    assert o.world() == before
    assert o.posts() == [] and o.notifications() == []


def test_a_dead_dependency_is_failed_over_after_approval(old_outage: Outage, worker: Any) -> None:
    o = old_outage
    (o.repo.deploy_dir / "current").write_text("version 2 healthy\n")
    o.uses_payments()
    o.payments.status = 503
    failover = (f"echo {o.standby.url}/health > {o.repo.deploy_dir}/upstream.url "
                f"&& echo failed-over >> {o.repo.deploy_dir}/failovers.log")
    o.save_profile(failover_command=failover)
    assert o.health() == 503
    before = o.world()
    run_id = start(o)
    paused_at(run_id, "failover-answer-1")
    assert o.world() == before
    o.only_awaiting_decision_was_said()
    text = form(run_id)
    assert "Fail" in text and "payments" in text and failover in text

    answer_gate(run_id, "approve", "bob", "payments provider is down, use the standby")
    final = wait_final(run_id, timeout=120)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert (o.repo.deploy_dir / "failovers.log").read_text().split() == ["failed-over"]
    assert o.health() == 200
    assert o.repo.snapshot() == before["repo"]  # failover touched no code
    assert o.posts()[-1]["state"] == "resolved"
    assert "Failed" in postmortem(run_id) and "over from payments" in postmortem(run_id)


def test_a_dead_dependency_without_failover_is_waited_for_and_documented(old_outage: Outage, worker: Any) -> None:
    o = old_outage
    (o.repo.deploy_dir / "current").write_text("version 2 healthy\n")
    o.uses_payments()
    o.payments.status = 503
    before = o.world()
    final = wait_final(start(o), timeout=120)
    assert final.state.name == "WaitingOnDependency", final.state.message
    assert "payments is still down" in final.state.message and "nothing was changed" in final.state.message
    assert o.world() == before
    o.only_awaiting_decision_was_said()


def test_a_code_bug_without_a_recent_deploy_gets_the_hotfix_a_person_names(old_outage: Outage, worker: Any) -> None:
    o = old_outage
    fix = make_hotfix(o)
    v3 = o.repo.head()
    before = o.world()
    run_id = start(o)
    paused_at(run_id, "hotfix-ref-answer-1")
    assert o.world() == before
    o.only_awaiting_decision_was_said()
    assert "no recent deploy" in form(run_id) and "1 error line(s)" in form(run_id)

    # Someone the policy does not list cannot name the ref; the question is asked again.
    with pytest.raises(AnswerRefused, match="may not answer"):
        answer_gate(run_id, "approve", "mallory", "trust me", ref="hotfix/basket")
    paused_at(run_id, "hotfix-ref-answer-2")
    # What `sevflow approve RUN --as alice --reason ... --ref hotfix/basket` does.
    named = answer_gate(run_id, "approve", "alice", "the fix is on hotfix/basket", ref="hotfix/basket")
    assert "named 'hotfix/basket'" in named
    paused_at(run_id, "hotfix-answer-1")
    assert o.world() == before
    text = form(run_id)
    assert "Deploy hotfix" in text and fix[:7] in text and "+version 3 healthy (basket fixed)" in text

    answer_gate(run_id, "approve", "bob", "reviewed the diff")
    final = wait_final(run_id, timeout=120)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert git(o.repo.path, "rev-parse", "HEAD^") == v3
    assert git(o.repo.path, "rev-parse", "HEAD^{tree}") == git(o.repo.path, "rev-parse", f"{fix}^{{tree}}")
    assert o.app.deployed() == "version 3 healthy (basket fixed)" and o.health() == 200
    assert "Deployed hotfix hotfix/basket" in postmortem(run_id)


def test_a_fix_that_breaks_while_watched_goes_back_to_diagnosis(outage: Outage, worker: Any) -> None:
    o = outage
    # Watched long enough for the test to break it first; the second watch holds for as long.
    o.save_profile(watch_seconds=15, watch_interval_seconds=0.2)
    run_id = start(o)
    paused_at(run_id, "rollback-answer-1")
    answer_gate(run_id, "approve", "alice", "roll back")

    # Once the fix was confirmed from every source, it breaks again while being watched.
    def confirmed() -> bool:
        return any(v.get("description") == "Step 'Confirm system operational' completed"
                   for v in records(run_id).values())
    until(confirmed, timeout=120, interval=0.05, what="the fix to be confirmed")
    (o.repo.deploy_dir / "current").write_text("version 2 unhealthy\n")

    # Back to diagnosis: a recent deploy (the rollback itself) again, a second gate, a second fix.
    paused_at(run_id, "rollback-2-answer-1")
    lines = [v["description"] for v in records(run_id).values()]
    assert any("broke again while watched" in line and "back to diagnosis" in line for line in lines)
    assert "broke-again" in [p["state"] for p in o.posts()]
    answer_gate(run_id, "approve", "alice", "again")
    final = wait_final(run_id, timeout=120)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert o.health() == 200 and o.app.deployed() == "version 2 healthy"
    assert [p["state"] for p in o.posts()] == ["investigating", "monitoring", "broke-again", "monitoring",
                                                "resolved"]


# --- rejection at every gate -------------------------------------------------------------------


@pytest.mark.parametrize("gate", ["rollback", "failover", "hotfix-ref", "hotfix"])
def test_rejection_at_every_gate_leaves_everything_as_it_was(gate: str, tmp_path: Path, stack: Any,
                                                             receiver: WebhookReceiver, worker: Any) -> None:
    o = Outage(tmp_path, receiver, old_history=gate != "rollback")
    try:
        if gate == "failover":
            (o.repo.deploy_dir / "current").write_text("version 2 healthy\n")
            o.uses_payments()
            o.payments.status = 503
            o.save_profile(failover_command=f"echo x > {o.repo.deploy_dir}/upstream.url")
        if gate.startswith("hotfix"):
            make_hotfix(o)
        before = o.world()
        run_id = start(o)
        if gate == "hotfix":
            paused_at(run_id, "hotfix-ref-answer-1")
            resume_with(run_id, decision="approve", ref="hotfix/basket", approver="alice", reason="this one")
        paused_at(run_id, f"{gate}-answer-1")
        if gate == "hotfix-ref":
            assert resume_with(run_id, decision="reject", approver="bob", reason="we wait for the team")[
                "status"] == "ACCEPT"
        else:
            answer_gate(run_id, "reject", "bob", "not this")
        final = wait_final(run_id, timeout=120)
        assert final.state.name == "Rejected", final.state.message
        assert "nothing was changed" in final.state.message
        assert o.world() == before
        o.only_awaiting_decision_was_said()
        assert "Rejected by bob" in postmortem(run_id) or "rejected" in postmortem(run_id)
    finally:
        o.close()


# --- alerts, dry run, the Run form ---------------------------------------------------------------


def test_an_alert_starts_it_and_its_resolution_shows_at_the_waiting_gate(outage: Outage, stack: Any, worker: Any,
                                                                          tmp_path: Path) -> None:
    from sevflow.flows.approval_escalation import approval_escalation
    from sevflow.gate import due_escalations
    from tests.intake.conftest import TOKENS, save_sources
    from tests.support.stack import Intake

    o = outage
    save_sources("http://127.0.0.1:9")
    rules = f"""\
rules:
  - name: down
    match:
      labels: {{service: "{o.name}"}}
    procedure: production-system-down
    service_label: service
    severity: SEV-1
    parameters: {{policy: {o.service.policy}}}
"""
    intake = Intake(stack.env(), tmp_path / "intake", rules, answer_wait=5.0)
    intake.start()
    try:
        started = (datetime.now(timezone.utc) - timedelta(minutes=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
        alert = {"id": f"down-{o.name}", "summary": "checkout health failing", "labels": {"service": o.name},
                 "starts_at": started}
        headers = {"Authorization": f"Bearer {TOKENS['generic']}"}

        def run_of_alert() -> str | None:
            answer = httpx.post(f"{intake.url}/alerts/generic", json=alert, headers=headers, timeout=15).json()
            return answer["alerts"][0]["flow_run_id"]

        run_id = until(run_of_alert, timeout=60, what="the alert's run")
        before_gate = paused_at(run_id, "rollback-answer-1")
        assert before_gate.parameters["severity"] == "SEV-1"
        before = o.world()

        resolved = httpx.post(f"{intake.url}/alerts/generic", json=dict(alert, status="resolved"), headers=headers,
                              timeout=15).json()
        assert resolved["alerts"][0]["outcome"] == "resolved"
        until(lambda: any(v["description"].startswith("Alert resolved")
                          for v in records(run_id, "sevflow-record-alert-").values()), what="the resolved alert")
        # A worker looking for due escalations sees the banner is due (and starts a watcher run for it).
        assert f"{run_id}:rollback:alert-resolved" in due_escalations()
        approval_escalation()  # the watcher's pass marks the waiting form
        assert form(run_id).startswith("**⚠ The incident's alert resolved**")
        assert f"{run_id}:rollback:alert-resolved" not in due_escalations()  # once
        noted = records(run_id).get("sevflow-record-rollback-alert-resolved")
        assert noted and "resolved while gate 'rollback' waited" in noted["description"]

        answer_gate(run_id, "reject", "alice", "the alert resolved by itself")
        assert wait_final(run_id, timeout=120).state.name == "Rejected"
        assert o.world() == before
        timeline = next(a for k, a in artifacts(run_id).items() if k.endswith("-timeline"))
        assert "resolved while gate 'rollback' waited" in str(timeline.data)
    finally:
        intake.stop()


def test_sevflow_plan_shows_the_plan_and_changes_nothing(outage: Outage, stack: Any) -> None:
    o = outage
    before = o.world()
    env = dict(os.environ) | stack.env()
    shown = subprocess.run([sys.executable, "-m", "sevflow", "plan", PROCEDURE, "--param", f"service={o.name}",
                            "--param", f"policy={o.service.policy}"], capture_output=True, text=True, timeout=300,
                           env=env, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    found = re.search(r"Gate 'rollback' would ask about plan ([0-9a-f]{64})", shown.stdout)
    assert found, shown.stdout
    assert "Roll back" in shown.stdout and o.repo.commits["v2"][:12] in shown.stdout
    assert o.world() == before and o.posts() == [] and o.notifications() == []


def test_the_run_form_documents_every_parameter(stack: Any, worker: Any) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=10) as client:
        deployment = client.get(f"/deployments/name/{deployment_path(PROCEDURE)}").json()
    properties = deployment["parameter_openapi_schema"]["properties"]
    assert set(properties) == {"service", "profile", "severity", "incident_id", "reason", "policy", "dry_run"}
    assert "Outage Profile" in properties["profile"]["description"]
    assert all(p.get("description") for p in properties.values())
