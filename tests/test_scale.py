"""sevflow on Prefect's scale-out setup: a work pool whose queues follow severity, process
workers on several "hosts" (processes with their own local storage), task results on S3
(moto's server), deployments registered by `sevflow deploy` and by `prefect deploy`."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import boto3
import httpx
import pytest

from tests.conftest import Service, read_run, wait_final, wait_paused
from tests.support.repos import BUILD, git
from tests.support.stack import PoolWorker, PrefectServer
from tests.support.wait import until
from sevflow.deployments import deployment_path

BUCKET = "sevflow-fleet"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Fleet:
    server: PrefectServer
    env: dict[str, str]
    s3_endpoint: str

    def sevflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sevflow", *args], capture_output=True, text=True, timeout=180,
                              env=dict(os.environ) | self.env, stdin=subprocess.DEVNULL)

    def s3_keys(self) -> list[str]:
        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextlib.contextmanager
def _client_settings(server: PrefectServer) -> Iterator[None]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_UI_URL,
        temporary_settings,
    )

    env = server.env()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: env["PREFECT_UI_URL"],
                                     PREFECT_LOCAL_STORAGE_PATH: env["PREFECT_LOCAL_STORAGE_PATH"]}):
        yield


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, moto_s3: str) -> Iterator[Fleet]:
    """A Prefect server of its own, shared result storage on S3, every procedure deployed to the
    `sevflow` work pool by `sevflow deploy`. Workers are started by each test."""
    server = PrefectServer(tmp_path_factory.mktemp("fleet"))
    try:
        server.start()
        with _client_settings(server):
            fleet = Fleet(server, server.env() | AWS_ENV, moto_s3)
            boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
            stored = fleet.sevflow("storage", "--bucket", BUCKET, "--endpoint-url", moto_s3, "--region", "us-east-1")
            assert stored.returncode == 0, stored.stderr
            deployed = fleet.sevflow("deploy")
            assert deployed.returncode == 0, deployed.stderr
            assert "sev-1, sev-2, sev-3, sev-4" in deployed.stdout
            from sevflow.setup import ensure_defaults

            ensure_defaults()
            yield fleet
    finally:
        server.stop()


@pytest.fixture
def workers() -> Iterator[list[PoolWorker]]:
    started: list[PoolWorker] = []
    yield started
    for w in started:
        w.stop()


def _start_worker(fleet: Fleet, workers: list[PoolWorker], root: Path, **kwargs: object) -> PoolWorker:
    w = PoolWorker(fleet.env, root, **kwargs)  # type: ignore[arg-type]
    workers.append(w)
    w.start()
    w.wait_ready(fleet.server.api_url)
    return w


def _queue_silent(name: str) -> bool:
    from prefect.client.orchestration import get_client

    from sevflow.cli import WORKER_SILENCE_SECONDS, _seconds_since

    with get_client(sync_client=True) as client:
        queue = next(q for q in client.read_work_queues(work_pool_name="sevflow") if q.name == name)
    since = _seconds_since(queue.last_polled)
    return since is None or since > WORKER_SILENCE_SECONDS


def _service(root: Path, receiver: object = None) -> Service:
    root.mkdir(parents=True)
    return Service(root, receiver)  # type: ignore[arg-type]


def _create_run(procedure: str, queue: str, **parameters: object) -> str:
    from prefect.deployments import run_deployment

    return str(run_deployment(deployment_path(procedure), parameters=parameters, timeout=0, work_queue_name=queue).id)


def test_pool_queues_follow_severity(fleet: Fleet) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        queues = sorted(client.read_work_queues(work_pool_name="sevflow"), key=lambda q: q.priority)
        pool = client.read_work_pool("sevflow")
        deployment = client.read_deployment_by_name(deployment_path("application-rollback"))
    assert [q.name for q in queues][:4] == ["sev-1", "sev-2", "sev-3", "sev-4"]
    assert pool.type == "process"
    assert deployment.work_pool_name == "sevflow" and deployment.work_queue_name == "sev-2"
    assert deployment.entrypoint == "sevflow.flows.application_rollback:application_rollback"


def test_a_sev1_run_queued_behind_ten_sev3_runs_starts_before_them(fleet: Fleet, workers: list[PoolWorker],
                                                                    tmp_path: Path) -> None:
    _start_worker(fleet, workers, tmp_path / "worker", limit=1)
    service = _service(tmp_path / "svc")
    building, release = tmp_path / "building", tmp_path / "release"
    # The build waits for the test's word: while it does, the pool's only worker slot is taken.
    service.save_target(build_command=f"touch {building} && until [ -f {release} ]; do sleep 0.05; done && {BUILD}")
    service.save_policy()
    try:
        started = fleet.sevflow("run", "application-rollback", "--param", f"service={service.name}",
                                "--param", f"policy={service.policy}", "--param", "severity=SEV-3")
        assert started.returncode == 0, started.stderr
        busy = re.search(r"flow run ([0-9a-f-]{36})", started.stdout).group(1)
        assert read_run(busy).work_queue_name == "sev-3"  # `sevflow run` puts a run on its severity's queue
        wait_paused(busy)
        from sevflow.gate import answer_gate

        answer_gate(busy, "approve", "alice", "v2 is good")
        until(building.exists, timeout=120, what="the approved rollback to occupy the worker")

        # Runs that fail at once (no such service): all that matters is the order they start in.
        sev3 = [_create_run("application-rollback", "sev-3", service=f"absent-{i}", severity="SEV-3")
                for i in range(10)]
        sev1 = _create_run("application-rollback", "sev-1", service="absent-sev1", severity="SEV-1")
        assert read_run(sev1).state.type.value == "SCHEDULED"
    finally:
        release.touch()
    assert wait_final(busy, 120).state.type.value == "COMPLETED"
    runs = {r: wait_final(r, 180) for r in [*sev3, sev1]}
    assert all(run.state.type.value == "FAILED" for run in runs.values())  # each ran, and found no service
    assert runs[sev1].start_time < min(runs[r].start_time for r in sev3)
    service.app.close()


def test_a_gate_opened_on_host_a_completes_on_host_b_and_repeats_no_side_effect(
        fleet: Fleet, workers: list[PoolWorker], tmp_path: Path, receiver) -> None:
    host_a = _start_worker(fleet, workers, tmp_path / "host-a")
    service = _service(tmp_path / "svc", receiver)
    service.save_target()
    service.save_policy(tiers=[3600.0])  # tier 0 is told when the gate opens: a side effect before the gate
    v3 = service.repo.head()
    run_id = _create_run("application-rollback", "sev-1", service=service.name, policy=service.policy,
                         severity="SEV-1")
    wait_paused(run_id, timeout=120)
    assert len(receiver.received) == 1
    assert any(k.endswith(".json") or "/" in k for k in fleet.s3_keys())  # A's step results are on S3

    host_a.kill_9()  # for good: its process group, forkserver and all
    until(lambda: _queue_silent("sev-1"), timeout=90, what="the server to see no worker polling sev-1")
    said = fleet.sevflow("approve", run_id[-8:], "--as", "alice", "--reason", "v2 was healthy")
    assert said.returncode == 0, said.stderr
    assert "No worker is running for this run: queue sev-1 of work pool sevflow" in said.stderr
    assert "sevflow worker" in said.stderr and "Answer recorded" in said.stdout
    status = fleet.sevflow("status")
    assert re.search(rf"Answered, not yet resumed: 1\n +{run_id[-8:]} +application-rollback on queue sev-1",
                     status.stdout), status.stdout

    _start_worker(fleet, workers, tmp_path / "host-b")
    final = wait_final(run_id, 180)
    assert final.state.type.value == "COMPLETED", final.state.message
    # Each side effect once: one page, one rollback commit on top of v3, one build, one deploy.
    assert len(receiver.received) == 1
    assert git(service.repo.path, "rev-parse", "HEAD^") == v3
    assert git(service.repo.path, "rev-list", "--count", f"{v3}..HEAD") == "1"
    assert (service.repo.deploy_dir / "builds.log").read_text().splitlines() == ["build"]
    assert service.app.deployed() == "version 2 healthy"
    # Neither host kept a result on its own disk: the replay on B read A's results from S3.
    for host in ("host-a", "host-b"):
        local = tmp_path / host / "storage"
        assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))
    service.app.close()


def test_prefect_deploy_all_registers_every_procedure_on_a_fresh_server(tmp_path: Path,
                                                                       workers: list[PoolWorker]) -> None:
    import sevflow.deployments as sevflow_deployments
    from sevflow.deployments import deployment_name, entrypoint, follow_up, procedures, watcher

    (tmp_path / "prefect").mkdir()
    server = PrefectServer(tmp_path / "prefect")
    try:
        server.start()
        env = dict(os.environ) | server.env()
        prefect_yaml = Path(sevflow_deployments.__file__).parent / "prefect.yaml"

        def prefect(*args: str) -> subprocess.CompletedProcess[str]:
            # From an empty folder: the entrypoints must resolve from the installed package.
            return subprocess.run([sys.executable, "-m", "prefect", *args], capture_output=True, text=True,
                                  timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)

        pool = prefect("work-pool", "create", "sevflow", "--type", "process")
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deployed = prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_yaml))
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        api = server.api_url
        flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
        found = {flows[d["flow_id"]]: d for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
        expected = {f.name: f for f in (*procedures().values(), watcher(), follow_up())}
        assert set(found) == set(expected)
        for name, flow in expected.items():
            assert found[name]["name"] == deployment_name(name)  # as `sevflow deploy` names it
            assert found[name]["entrypoint"] == entrypoint(flow)
            assert found[name]["work_pool_name"] == "sevflow"

        # And a sevflow worker runs what `prefect deploy` registered.
        with _client_settings(server):
            fleet = Fleet(server, server.env(), "")
            _start_worker(fleet, workers, tmp_path / "worker")
            run_id = _create_run("approval-escalation", "sev-1")
            assert wait_final(run_id, 120).state.type.value == "COMPLETED"
    finally:
        server.stop()
