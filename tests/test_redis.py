"""Several Prefect server replicas on one PostgreSQL database share their messaging through the
machine's Redis (prefect-redis), as the README's "Running at scale" section sets them up."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from tests.support.stack import PrefectServer
from tests.support.wait import until

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
def redis_db() -> Iterator[int]:
    """An empty Redis database of the machine's server (other sessions may use others)."""
    candidates = list(range(1, 16))
    random.shuffle(candidates)
    for db in candidates:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if client.dbsize() == 0:
            yield db
            client.flushdb()
            return
    raise AssertionError("no empty Redis database on 127.0.0.1:6379")


def redis_settings(db: int) -> dict[str, str]:
    """Prefect's settings for servers sharing messaging through Redis (prefect-redis)."""
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": url,
        "PREFECT_SERVER_DOCKET_URL": url,
        "PREFECT_SERVER_DOCKET_NAME": f"sevflow-test-{uuid.uuid4().hex[:8]}",
    }


SMOKE_FLOW = """
import sys
from prefect import flow, task

@task(name="write through replica b")
def step() -> str:
    return "done"

@flow(name=sys.argv[1])
def smoke() -> str:
    return step()

state = smoke(return_state=True)
assert state.is_completed(), state
print(state.state_details.flow_run_id)
"""


def test_two_server_replicas_share_runs_and_events_through_redis(tmp_path: Path, redis_db: int) -> None:
    settings = redis_settings(redis_db)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    services = PrefectServer(tmp_path / "a", settings)  # API and the background services
    api_only = PrefectServer(tmp_path / "b", settings)  # a second API replica, no services
    api_only.extra_args = ["--no-services"]
    try:
        services.start()
        api_only.database = services.database
        api_only.resume()  # the same database, already made

        # A run reported only to replica B, from a process of its own (Prefect's events worker is
        # one per process and keeps the server it first met, so the run must not share this
        # test process): its task run reaches the database through Redis, to replica A's
        # task-run recorder (B runs no services, and keeps no messages of its own).
        script = tmp_path / "smoke.py"
        script.write_text(SMOKE_FLOW)
        done = subprocess.run([sys.executable, str(script), f"redis-smoke-{uuid.uuid4().hex[:6]}"],
                              env=dict(os.environ) | api_only.env(), capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        flow_run_id = done.stdout.strip().splitlines()[-1]

        def recorded_on_a() -> list[dict]:
            runs = httpx.post(f"{services.api_url}/task_runs/filter",
                              json={"flow_runs": {"id": {"any_": [flow_run_id]}}}, timeout=5).json()
            return [r for r in runs if r["state_type"] == "COMPLETED"]

        runs = until(recorded_on_a, timeout=300, what="replica A to record the task run sent to replica B")
        assert [r["name"].rsplit("-", 1)[0] for r in runs] == ["write through replica b"]
        assert redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db).dbsize() > 0  # the streams live there
    finally:
        api_only.halt()
        services.stop()
