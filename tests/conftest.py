"""One real Prefect server (on PostgreSQL) and one sevflow worker per test session."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from tests.support.repos import BUILD, ServiceRepo, make_service_repo, save_service_target  # noqa: E402
from tests.support.services import HealthApp, WebhookReceiver  # noqa: E402
from tests.support.stack import PrefectServer, Worker  # noqa: E402
from sevflow.deployments import deployment_path

DEPLOY_TOKEN = "dpl-tok-7f3a9c1e5b"  # a secret: must appear in no log and no artifact
HEALTH_TOKEN = "hc-tok-2b8d4e6f0a"
WEBHOOK_TOKEN = "wh-tok-9e1c3a5d7f"
SECRETS = (DEPLOY_TOKEN, HEALTH_TOKEN, WEBHOOK_TOKEN)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect-home")
    server = PrefectServer(home)
    # The UI (both bundles) learns the API's address from /ui-settings, which otherwise says
    # the default :4200, not this server's port; the browser tests in tests/ui need it right.
    server.extra_env["PREFECT_UI_API_URL"] = server.api_url
    server.start()
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_UI_URL,
        temporary_settings,
    )

    with temporary_settings(updates={
        PREFECT_API_URL: server.api_url,
        PREFECT_UI_URL: server.env()["PREFECT_UI_URL"],
        PREFECT_LOCAL_STORAGE_PATH: server.env()["PREFECT_LOCAL_STORAGE_PATH"],
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }):
        from sevflow.setup import ensure_defaults

        ensure_defaults()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's AWS server on loopback: the S3 every worker of the tests reaches."""
    from moto.server import ThreadedMotoServer

    from tests.support.stack import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def worker(stack: PrefectServer) -> Iterator[Worker]:
    # A small limit on purpose: a gate that held its worker slot would stall the suite.
    # Its own sevflow state folder: the caches of remote repositories go there, not to ~/.sevflow.
    w = Worker(stack.env() | {"SEVFLOW_HOME": str(stack.home / "worker-state")}, stack.home / "worker.log", limit=3)
    w.start()
    w.wait_ready(stack.api_url)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


class Service:
    """A production service for one test: its repo, app, target block and policy block."""

    def __init__(self, root: Path, receiver: WebhookReceiver | None, when: str | None = None) -> None:
        self.name = f"shop-{uuid.uuid4().hex[:8]}"
        self.policy = f"policy-{self.name}"
        self.repo: ServiceRepo = make_service_repo(root, when)
        self.app = HealthApp(self.repo.deploy_dir)
        self.receiver = receiver

    def save_target(self, **overrides: Any) -> None:
        save_service_target(
            self.name, self.repo, self.app.health_url, deploy_token=DEPLOY_TOKEN, health_token=HEALTH_TOKEN,
            build_command=overrides.pop("build_command", BUILD + f" && echo build >> {self.repo.deploy_dir}/builds.log"),
            **overrides,
        )

    def save_policy(self, approvers: list[str] | None = None, required: int = 1,
                    tiers: list[float] | None = None) -> None:
        from sevflow.blocks import ApprovalPolicy, ApprovalRule, EscalationTier

        escalation: dict[str, list[EscalationTier]] = {}
        if tiers is not None:
            block = None
            if self.receiver is not None:
                block = self._webhook_block()
            escalation["*"] = [
                EscalationTier(name=f"tier {i}", notify=[f"oncall-{i}"], wait_seconds=w, notification_block=block)
                for i, w in enumerate(tiers)
            ]
        ApprovalPolicy(
            rules=[ApprovalRule(change_kind="*", approvers=approvers or ["alice", "bob"], required_approvals=required)],
            escalation=escalation,
        ).save(self.policy, overwrite=True)

    def _webhook_block(self) -> str:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        assert self.receiver is not None
        name = f"hook-{self.name}"
        CustomWebhookNotificationBlock(
            name="sevflow-test",
            url=f"{self.receiver.url}/notify",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
            headers={"Authorization": "Bearer {{token}}"},
            secrets={"token": WEBHOOK_TOKEN},
            allow_private_urls=True,
        ).save(name, overwrite=True)
        return f"custom-webhook/{name}"


@pytest.fixture
def service(tmp_path: Path, stack: PrefectServer, receiver: WebhookReceiver) -> Iterator[Service]:
    s = Service(tmp_path, receiver)
    s.save_target()
    s.save_policy()
    yield s
    s.app.close()


# --- helpers to drive runs through the API ----------------------------------------------


def api(stack: PrefectServer) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, timeout=10)


def start(procedure: str, **parameters: Any) -> str:
    from prefect.deployments import run_deployment

    return str(run_deployment(deployment_path(procedure), parameters=parameters, timeout=0).id)


def read_run(run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(run_id))


def wait_for(run_id: str, done: Callable[[Any], bool], timeout: float = 90.0, what: str = "") -> Any:
    """Poll the run through the API until `done(run)`; fail with its state if it never is."""
    deadline = time.monotonic() + timeout
    run = read_run(run_id)
    while time.monotonic() < deadline:
        run = read_run(run_id)
        if done(run):
            return run
        if run.state and run.state.is_final() and not done(run):
            break
        time.sleep(0.2)
    state = run.state
    raise AssertionError(f"run {run_id} never {what or 'reached the condition'}: "
                         f"{state.type.value if state else None} {state.name if state else ''} {state.message if state else ''}")


def wait_paused(run_id: str, gate_answer: int | None = None, timeout: float = 90.0) -> Any:
    def paused(run: Any) -> bool:
        if not (run.state and run.state.type.value == "PAUSED"):
            return False
        return gate_answer is None or str(run.state.state_details.pause_key).endswith(f"-answer-{gate_answer}")
    return wait_for(run_id, paused, timeout, what=f"paused at a gate (answer {gate_answer})")


def wait_final(run_id: str, timeout: float = 90.0) -> Any:
    return wait_for(run_id, lambda r: bool(r.state and r.state.is_final()), timeout, what="finished")
