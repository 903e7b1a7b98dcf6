"""`sevflow up`: the embedded default, started and stopped as a person would."""

from __future__ import annotations

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
    def __init__(self, home: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"SEVFLOW_HOME": str(home), "SEVFLOW_APPROVERS": "alice", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sevflow", "up", "--port", str(port), "--escalation-interval", "0"],
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
        return self.process.wait(60)


def _deployed(api: str) -> bool:
    names = {(d["name"]) for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
    flows = {f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
    return {"application-rollback", "configuration-rollback", "approval-escalation"} <= flows and "sevflow" in names


def test_up_starts_everything_stops_everything_and_reuses_its_state(tmp_path: Path) -> None:
    home, port = tmp_path / "state", free_port()
    api = f"http://127.0.0.1:{port}/api"
    up = Up(home, port)
    try:
        up.wait_for("Ctrl-C stops everything")
        assert any(f"http://127.0.0.1:{port}" in line for line in up.lines)
        assert any("sevflow approve" in line for line in up.lines)
        until(lambda: _deployed(api), 120, 0.3, what="sevflow up to deploy the procedures")
        slugs = {b["slug"] for b in httpx.post(f"{api}/block_types/filter", json={}).json()}
        assert {"sevflow-service-target", "sevflow-approval-policy"} <= slugs
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
