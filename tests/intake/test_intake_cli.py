"""`sevflow intake` without a Prefect server it can reach: says how to point it at one, exits
non-zero, and never starts Prefect's temporary server in its place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.stack import free_port


def run_intake(env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([sys.executable, "-m", "sevflow", "intake", "--port", str(free_port()),
                           "--state", str(home / "intake"), "--rules", str(home / "rules.yaml")],
                          env=clean | {"PREFECT_HOME": str(home / "prefect"), "SEVFLOW_HOME": str(home),
                                       "COLUMNS": "200"} | env,
                          capture_output=True, text=True, timeout=120)


def test_without_prefect_api_url_it_says_how_to_set_it_and_exits(tmp_path: Path) -> None:
    done = run_intake({}, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PREFECT_API_URL is not set" in done.stderr and "sevflow up" in done.stderr
    # no temporary server: it would have created its database under PREFECT_HOME
    assert not list((tmp_path / "prefect").glob("*.db")) and not (tmp_path / "intake").exists()


def test_with_a_prefect_that_does_not_answer_it_says_so_and_exits(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    done = run_intake({"PREFECT_API_URL": url}, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert url in done.stderr.replace("\n", "") and "does not answer" in done.stderr
    assert not list((tmp_path / "prefect").glob("*.db")) and not (tmp_path / "intake").exists()
