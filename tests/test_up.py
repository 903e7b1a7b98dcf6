"""`sevflow up`: the embedded default, started and stopped as a person would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

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
    def __init__(self, home: Path, port: int, intake_port: int = 0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"SEVFLOW_HOME": str(home), "SEVFLOW_APPROVERS": "alice", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.marker = f"SEVFLOW_HOME={home}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sevflow", "up", "--port", str(port), "--escalation-interval", "0",
             "--intake-port", str(intake_port)],
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
    return {"application-rollback", "configuration-rollback", "approval-escalation"} <= flows and "sevflow" in names


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
    up = Up(home, port, intake_port)
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
    finally:
        code = up.ctrl_c()
    assert code == 0, "".join(up.lines)
    until(lambda: not _processes_using(f"PREFECT_HOME={home}"), 20, what="every started process to exit")
    assert _processes_using(f"PREFECT_HOME={home}") == []  # nothing left behind
    assert (home / "prefect" / "prefect.db").exists()

    again = Up(home, port)
    try:
        again.wait_for("sevflow is up")
        assert httpx.get(f"{api}/variables/name/made_by_a_person").json()["value"] == "kept"
        policies = httpx.post(f"{api}/block_documents/filter", json={"block_types": {"slug": {"any_": ["sevflow-approval-policy"]}}}).json()
        assert [p["name"] for p in policies] == ["default"]
    finally:
        assert again.ctrl_c() == 0
