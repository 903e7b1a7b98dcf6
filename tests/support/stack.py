"""A real Prefect server (on PostgreSQL) and real sevflow worker processes for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Mapping

import httpx
import psycopg

from sevflow.embedded import stop as stop_group
from sevflow.embedded import wait_healthy
from sevflow.deployments import deployment_path

PG_DSN = os.environ.get("SEVFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """`prefect server start` on a fresh PostgreSQL database, loopback only, analytics off.

    `extra_env` is added to the server process's environment only (not to `env()`, which
    clients and workers use); it may be extended after construction, before `start()`.
    """

    def __init__(self, home: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.database = f"sevflow_test_{uuid.uuid4().hex[:10]}"
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.extra_env: dict[str, str] = dict(extra_env or {})
        self.extra_args: list[str] = []  # e.g. --no-services for an API-only replica
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_URL": self.api_url[: -len("/api")],
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_LOCAL_STORAGE_PATH": str(self.home / "storage"),
            # sevflow's own state (the approval-link key) for workers and the intake, not ~/.sevflow
            "SEVFLOW_HOME": str(self.home / "sevflow"),
        }

    def start(self) -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self._launch()

    def halt(self) -> None:
        """Stop the server process, keeping its database (an outage); `resume()` starts it again."""
        if self.process:
            stop_group(self.process)

    def resume(self) -> None:
        self._launch()

    def _launch(self) -> None:
        env = dict(os.environ) | self.env()
        env.pop("PREFECT_API_URL")
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = PG_DSN.replace("postgresql://", "postgresql+asyncpg://").rsplit(
            "/", 1)[0] + f"/{self.database}"
        env.update(self.extra_env)
        self.log = (self.home / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
             *self.extra_args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        wait_healthy(self.api_url, self.process, timeout=120)

    def stop(self) -> None:
        if self.process:
            stop_group(self.process)
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


class _Child:
    """A sevflow process in its own process group."""

    process: subprocess.Popen[bytes] | None = None

    def kill_9(self) -> None:
        """kill -9 it and everything it started, as a crashed host would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process:
            stop_group(self.process)


class Worker(_Child):
    """`sevflow serve` in its own process group, as on an operator's host."""

    def __init__(self, env: dict[str, str], log_path: Path, limit: int = 20) -> None:
        self.env = env
        self.log_path = log_path
        self.limit = limit
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sevflow", "serve", "--limit", str(self.limit), "--poll", "0.2",
             "--escalation-interval", "0"],
            env=dict(os.environ) | self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, api_url: str, timeout: float = 120.0) -> None:
        """Until every sevflow deployment is registered by this worker."""
        deadline = time.monotonic() + timeout
        names = ("application-rollback", "configuration-rollback", "production-system-down", "security-breach",
                 "data-corruption", "database-rollback", "memory-disk-full", "approval-escalation")
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sevflow serve exited: see {self.log_path}")
            if all(httpx.get(f"{api_url}/deployments/name/{deployment_path(n)}", timeout=5).status_code == 200 for n in names):
                return
            time.sleep(0.3)
        raise RuntimeError(f"sevflow serve did not register its deployments: see {self.log_path}")


class ServedFlow(_Child):
    """A flow of the tests' own, served by `flow.serve()` in its own process (plain Prefect)."""

    def __init__(self, module_flow: str, flow_name: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module_flow.split(":")[0]
        self.flow_name = flow_name
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        from tests.support.wait import until

        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen([sys.executable, "-m", self.module], cwd=root,
                                        env=dict(os.environ) | self.env, stdout=self.log_path.open("ab"),
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        api = self.env["PREFECT_API_URL"]

        def registered() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited: {self.log_path.read_text()[-2000:]}")
            return httpx.get(f"{api}/deployments/name/{self.flow_name}/test", timeout=5).status_code == 200

        until(registered, timeout=timeout, what=f"{self.flow_name} to be served")

    def run(self, **parameters: object) -> str:
        from prefect.deployments import run_deployment

        return str(run_deployment(f"{self.flow_name}/test", parameters=parameters, timeout=0).id)


class Intake(_Child):
    """`sevflow intake` in its own process group, with its own rules file and store."""

    def __init__(self, env: dict[str, str], root: Path, rules: str, answer_wait: float = 3.0) -> None:
        self.env = env
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.rules_path = root / "rules.yaml"
        self.rules_path.write_text(rules)
        self.state_dir = root / "state"
        self.log_path = root / "intake.log"
        self.answer_wait = answer_wait
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sevflow", "intake", "--port", str(self.port), "--rules", str(self.rules_path),
                "--state", str(self.state_dir), "--answer-wait", str(self.answer_wait),
                "--credentials-refresh", "0.5"]

    def start(self, wait: bool = True) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), env=dict(os.environ) | self.env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0, credentials: bool = True) -> dict:
        """Until /healthz answers (with the senders' credentials loaded, unless told otherwise)."""
        from tests.support.wait import until

        def ready() -> dict | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sevflow intake exited ({self.process.returncode}): {self.log_path.read_text()[-3000:]}")
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=2).json()
            except httpx.TransportError:
                return None
            return health if health.get("credentials_loaded") or not credentials else None

        return until(ready, timeout=timeout, what=f"sevflow intake to be ready (log: {self.log_path})")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=5).json()


def register_procedures(api_url: str) -> None:
    """Create sevflow's procedure deployments on a server without serving them: runs the
    intake creates there stay Scheduled (open incidents), which is all an intake test needs."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.callables import parameter_schema

    from sevflow.deployments import deployment_name, procedures

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for name, flow in procedures().items():
            flow_id = client.create_flow_from_name(name)
            client.create_deployment(flow_id=flow_id, name=deployment_name(name),
                                     parameter_openapi_schema=parameter_schema(flow.fn).model_dump_for_openapi(),
                                     enforce_parameter_schema=True)


class PoolWorker(_Child):
    """`sevflow worker` (the `sevflow` work pool) in its own process group, with its own local
    storage path: a host of its own, as far as Prefect's results are concerned."""

    def __init__(self, env: dict[str, str], root: Path, limit: int = 20, host: str | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.env = env | {"PREFECT_LOCAL_STORAGE_PATH": str(root / "storage")}
        self.log_path = root / "worker.log"
        self.limit = limit
        self.host = host
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        assert self.process is not None
        return f"sevflow-{self.host or socket.gethostname()}-{self.process.pid}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "sevflow", "worker", "--limit", str(self.limit), "--poll", "0.2",
                   "--escalation-interval", "0"]
        self.process = subprocess.Popen(
            command + (["--host", self.host] if self.host else []),
            env=dict(os.environ) | self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, api_url: str, timeout: float = 120.0) -> None:
        """Until the server lists this worker in the pool (it has synced and polls)."""
        from tests.support.wait import until

        def listed() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sevflow worker exited: {self.log_path.read_text()[-3000:]}")
            response = httpx.post(f"{api_url}/work_pools/sevflow/workers/filter", json={}, timeout=5)
            return response.status_code == 200 and any(w["name"] == self.name for w in response.json())

        until(listed, timeout=timeout, interval=0.3, what=f"sevflow worker to join the pool (log: {self.log_path})")
