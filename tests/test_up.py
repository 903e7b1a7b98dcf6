"""`sevflow up`: the embedded default, started and stopped as a person would."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.stack import free_port
from tests.support.wait import until


def _processes_using(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


class Up:
    def __init__(self, home: Path, port: int, intake_port: int = 0, escalation_interval: float = 0,
                 args: tuple[str, ...] = ()) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"SEVFLOW_HOME": str(home), "SEVFLOW_APPROVERS": "alice", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.marker = f"SEVFLOW_HOME={home}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sevflow", "up", "--port", str(port), "--escalation-interval",
             str(escalation_interval), "--intake-port", str(intake_port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.2)

    def pids(self) -> dict[str, int]:
        """The children's pids, as `sevflow up` printed them (and again on each restart)."""
        found: dict[str, int] = {}
        for line in self.lines:
            for name, pid in re.findall(r"(the Prefect server|the worker \(sevflow serve\)|the alert intake)"
                                        r"(?::| started again,) pid (\d+)", line):
                found[name] = int(pid)
        return found

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            left = subprocess.run(["ps", "-eww", "-o", "pid,pgid,stat,etimes,args"], capture_output=True,
                                  text=True).stdout
            self.process.kill()
            for pid in _processes_using(self.marker):  # leave nothing running for the next tests
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError("sevflow up did not stop within 60 s of Ctrl-C.\n" + "".join(self.lines)
                                 + "\nprocesses:\n" + "\n".join(l for l in left.splitlines() if "sevflow" in l
                                                                 or "prefect" in l)) from None


def _deployed(api: str) -> bool:
    names = {(d["name"]) for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
    flows = {f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
    return {"application-rollback", "configuration-rollback", "approval-escalation"} <= flows and {"Rollback: Application", "Escalation Path"} <= names


def _intake_health(url: str) -> dict | None:
    try:
        health = httpx.get(f"{url}/healthz", timeout=2).json()
    except httpx.TransportError:
        return None
    return health if health.get("credentials_loaded") else None


def test_up_starts_everything_stops_everything_and_reuses_its_state(tmp_path: Path) -> None:
    home, port, intake_port = tmp_path / "state", free_port(), free_port()
    api = f"http://127.0.0.1:{port}/api"
    intake = f"http://127.0.0.1:{intake_port}"
    up = Up(home, port, intake_port, escalation_interval=3)  # the watcher looks every 3 s
    try:
        up.wait_for("Ctrl-C stops everything")
        assert any(f"http://127.0.0.1:{port}" in line for line in up.lines)
        assert any("sevflow approve" in line for line in up.lines)
        until(lambda: _deployed(api), 120, 0.3, what="sevflow up to deploy the procedures")
        slugs = {b["slug"] for b in httpx.post(f"{api}/block_types/filter", json={}).json()}
        assert {"sevflow-service-target", "sevflow-approval-policy", "sevflow-alert-source"} <= slugs
        assert any(f"{intake}/alerts/<source>" in line for line in up.lines)
        health = until(lambda: _intake_health(intake), 60, 0.3, what="the intake to answer")
        assert health["rules"] == 0 and (home / "intake-rules.yaml").exists()  # an example to start from
        refused = httpx.post(f"{intake}/alerts/generic", json={"id": "a", "summary": "b"})
        assert refused.status_code == 401 and "create a 'sevflow Alert Source' block" in refused.json()["error"]
        # Something a person made in the UI: it must survive a restart.
        httpx.post(f"{api}/variables/", json={"name": "made_by_a_person", "value": "kept"}).raise_for_status()
        assert _processes_using(f"PREFECT_HOME={home}")
        # The watcher looks every 3 s but, with no gate waiting, starts no run: the run list is
        # not filled with its empty passes (it used to be a 30 s schedule).
        until(lambda: any("Escalation watcher: looking at waiting gates every 3 s" in line for line in up.lines),
              120, 0.3, what="the escalation watcher to start looking")
        until(lambda: any("Escalation Path" in d["name"] and d.get("last_polled")
                          for d in httpx.post(f"{api}/deployments/filter", json={}).json()),
              120, 0.3, what="the worker to poll the watcher's deployment")
    finally:
        code = up.ctrl_c()
    assert code == 0, "".join(up.lines)
    until(lambda: not _processes_using(f"PREFECT_HOME={home}"), 20, what="every started process to exit")
    assert _processes_using(f"PREFECT_HOME={home}") == []  # nothing left behind
    assert (home / "prefect" / "prefect.db").exists()
    # No gate waited, so the watcher started no run at all (read from the stopped server's database).
    with contextlib.closing(sqlite3.connect(home / "prefect" / "prefect.db")) as db:
        states = [r[0] for r in db.execute(
            "SELECT flow_run.state_type FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
            "WHERE flow.name = 'approval-escalation'")]
    assert states == [], states

    again = Up(home, port)
    try:
        again.wait_for("sevflow is up")
        assert httpx.get(f"{api}/variables/name/made_by_a_person").json()["value"] == "kept"
        policies = httpx.post(f"{api}/block_documents/filter", json={"block_types": {"slug": {"any_": ["sevflow-approval-policy"]}}}).json()
        assert [p["name"] for p in policies] == ["default"]
    finally:
        assert again.ctrl_c() == 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_up_killed_leaves_no_process_behind_and_starts_again_on_the_same_port(tmp_path: Path, how: int) -> None:
    home, port, intake_port = tmp_path / "state", free_port(), free_port()
    api = f"http://127.0.0.1:{port}/api"
    up = Up(home, port, intake_port)
    try:
        up.wait_for("Ctrl-C stops everything")
        until(lambda: _deployed(api), 120, 0.3, what="sevflow up to deploy the procedures")
        os.kill(up.process.pid, how)  # SIGKILL: nothing of `sevflow up` runs; SIGHUP: a closed terminal
        up.process.wait(60)
        until(lambda: not _processes_using(up.marker), 60, what="every process of the killed sevflow up to exit")
    finally:
        if up.process.poll() is None:
            up.ctrl_c()
    again = Up(home, port, intake_port)
    try:
        again.wait_for("sevflow is up")
        until(lambda: _deployed(api), 120, 0.3, what="the new sevflow up to deploy the procedures")
        until(lambda: _intake_health(f"http://127.0.0.1:{intake_port}"), 60, 0.3, what="the new intake")
    finally:
        assert again.ctrl_c() == 0
    until(lambda: not _processes_using(again.marker), 20, what="every started process to exit")


def test_a_crashed_child_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    home, port, intake_port = tmp_path / "state", free_port(), free_port()
    intake = f"http://127.0.0.1:{intake_port}"
    up = Up(home, port, intake_port)
    try:
        up.wait_for("Ctrl-C stops everything")
        until(lambda: _intake_health(intake), 60, 0.3, what="the intake to answer")
        before = up.pids()
        assert set(before) == {"the Prefect server", "the worker (sevflow serve)", "the alert intake"}
        os.killpg(before["the alert intake"], signal.SIGKILL)
        up.wait_for("the alert intake exited (code -9); restarting it")
        until(lambda: up.pids()["the alert intake"] != before["the alert intake"], 60,
              what="the intake to be started again")
        until(lambda: _intake_health(intake), 60, 0.3, what="the restarted intake to answer")
        assert up.process.poll() is None
        assert up.pids()["the Prefect server"] == before["the Prefect server"] and _alive(before["the Prefect server"])
        assert _alive(before["the worker (sevflow serve)"])
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200
    finally:
        assert up.ctrl_c() == 0
    until(lambda: not _processes_using(up.marker), 20, what="every started process to exit")


def test_up_on_postgresql(tmp_path: Path) -> None:
    import uuid

    import psycopg

    from tests.support.stack import PG_DSN

    database = f"sevflow_up_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    dsn = PG_DSN.rsplit("/", 1)[0] + f"/{database}"
    port = free_port()
    up = Up(tmp_path / "state", port, args=("--database", dsn))
    try:
        up.wait_for("Ctrl-C stops everything")
        assert any("PostgreSQL" in line for line in up.lines)
        until(lambda: _deployed(f"http://127.0.0.1:{port}/api"), 120, 0.3, what="the procedures to be deployed")
        with psycopg.connect(dsn) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM flow").fetchall()}
        assert {"application-rollback", "configuration-rollback", "approval-escalation"} <= names
        assert not (tmp_path / "state" / "prefect" / "prefect.db").exists()
    finally:
        assert up.ctrl_c() == 0
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


AUTH_RULES = """\
rules:
  - name: labelled
    match:
      labels: {service: "shop-*"}
    procedure: application-rollback
    service_label: service
    severity: SEV-2
"""


def test_up_with_auth_locks_the_api_and_everything_of_sevflow_still_works(tmp_path: Path) -> None:
    """`sevflow up --auth`: an unauthenticated API call gets 401; the CLI (run, pending, approve,
    reject), the worker and the intake work with the password kept in the state folder, which
    no output or log shows."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    from pydantic import SecretStr

    from tests.support.repos import BUILD, make_service_repo, save_service_target
    from tests.support.services import HealthApp

    home, port, intake_port = tmp_path / "state", free_port(), free_port()
    api, intake = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{intake_port}"
    home.mkdir()
    (home / "intake-rules.yaml").write_text(AUTH_RULES)
    (tmp_path / "service").mkdir()
    repo = make_service_repo(tmp_path / "service")
    app = HealthApp(repo.deploy_dir)
    up = Up(home, port, intake_port, escalation_interval=5, args=("--auth",))
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "SEVFLOW_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def sevflow(*args: str, env: dict[str, str] = cli_env) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sevflow", *args], capture_output=True, text=True, env=env,
                              timeout=180, stdin=subprocess.DEVNULL)

    try:
        up.wait_for("Ctrl-C stops everything")
        secret_file = home / "api-auth"
        assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
        secret = secret_file.read_text().strip()
        user, password = secret.split(":", 1)
        assert len(password) >= 24
        # Without the password: 401. Health probes stay open.
        for call in (lambda: httpx.post(f"{api}/flows/filter", json={}),
                     lambda: httpx.post(f"{api}/flows/filter", json={}, auth=(user, "wrong")),
                     lambda: httpx.get(f"{api}/block_documents/count")):
            assert call().status_code == 401
        assert httpx.get(f"{api}/health").status_code == 200
        authed = httpx.Client(base_url=api, auth=(user, password), timeout=10)
        until(lambda: {"application-rollback", "approval-escalation"} <= {
            f["name"] for f in authed.post("/flows/filter", json={}).json()}, 120, 0.3, what="the procedures deployed")

        name = "shop-locked"
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: secret}):
            from sevflow.blocks import AlertSource

            save_service_target(name, repo, app.health_url, deploy_token="dpl-tok-locked", health_token="hc-locked",
                                build_command=BUILD)
            AlertSource(bearer_token=SecretStr("generic-locked-token")).save("generic", overwrite=True)

        def state(run_id: str) -> str:
            return authed.get(f"/flow_runs/{run_id}").json()["state"]["type"]

        # The CLI, with only PREFECT_API_URL and SEVFLOW_HOME: it finds the password itself.
        started = sevflow("run", "application-rollback", "--param", f"service={name}", "--param", "severity=SEV-3")
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = re.search(r"flow run ([0-9a-f-]{36})", started.stdout).group(1)
        until(lambda: state(run_id) == "PAUSED", 120, 0.3, what="the worker to run it to its gate")
        pending = sevflow("pending")
        assert pending.returncode == 0 and run_id[-8:] in pending.stdout, pending.stdout + pending.stderr
        approved = sevflow("approve", run_id, "--as", "alice", "--reason", "locked API, still works", "--wait", "120")
        assert approved.returncode == 0, approved.stdout + approved.stderr
        until(lambda: state(run_id) == "COMPLETED", 120, 0.3, what="the approved run to complete")
        assert app.deployed() == "version 2 healthy"

        # The intake starts a run from an alert (once it has loaded its credentials with the password).
        alert = {"id": "checkout-5xx", "summary": "checkout 5xx", "severity": "critical", "labels": {"service": name}}
        delivered = until(lambda: (lambda r: r if r.status_code == 202 else None)(httpx.post(
            f"{intake}/alerts/generic", json=alert, headers={"Authorization": "Bearer generic-locked-token"},
            timeout=10)), 60, 0.5, what="the intake to accept the alert")
        incident = delivered.json()["alerts"][0]["incident_id"]

        def alert_run() -> str | None:
            runs = authed.post("/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [f"incident:{incident}"]}}}).json()
            return runs[0]["id"] if runs and runs[0]["state_type"] == "PAUSED" else None
        from_alert = until(alert_run, 120, 0.3, what="the alert's run to reach its gate")
        rejected = sevflow("reject", from_alert, "--as", "alice", "--reason", "drill", "--wait", "120")
        assert rejected.returncode == 0, rejected.stdout + rejected.stderr
        until(lambda: authed.get(f"/flow_runs/{from_alert}").json()["state"]["name"] == "Rejected", 120, 0.3,
              what="the rejected run to end")

        # A command pointed at another address does not send the password; this one is refused.
        other = sevflow("pending", env=cli_env | {"SEVFLOW_HOME": str(tmp_path / "elsewhere")})
        assert other.returncode != 0 and "401" in other.stdout + other.stderr
        assert "it is locked with a password" in " ".join(other.stderr.split()), other.stderr
    finally:
        assert up.ctrl_c() == 0
        app.close()
    outputs = "".join(up.lines) + (home / "server.log").read_text(errors="replace")
    assert secret not in outputs and password not in outputs
    assert "API locked (--auth)" in outputs
