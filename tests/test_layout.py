"""The design card's layout: flows/, tasks/, blocks/, deployments/ at the repository's top,
installed under the `sevflow` namespace only; and the session really runs on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from tests.support.stack import PG_DSN, PrefectServer

ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_shows_the_cards_parts() -> None:
    for part in ("flows", "tasks", "blocks", "deployments", "tests", "pyproject.toml", "README.md"):
        assert (ROOT / part).exists(), part
    assert not (ROOT / "sevflow" / "flows").exists() and not (ROOT / "sevflow" / "tasks").exists()


def test_installed_there_is_no_top_level_tasks_blocks_or_flows(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(ROOT)],
                   check=True, timeout=600, capture_output=True)
    assert {p.name for p in site.iterdir() if p.is_dir()} & {"tasks", "blocks", "flows", "deployments"} == set()
    code = """
import importlib, sys
for name in ("tasks", "blocks", "flows", "deployments"):
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    sys.exit(f"import {name} worked")
from sevflow.deployments import procedures, watcher
import sevflow.flows.application_rollback as m
assert m.__file__.startswith(sys.argv[1]), m.__file__
print(sorted([*procedures(), watcher().name]))
"""
    done = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                                            "PREFECT_HOME": str(tmp_path / "prefect")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "application-rollback" in done.stdout and "configuration-rollback" in done.stdout


def test_the_session_server_runs_on_postgresql(stack: PrefectServer) -> None:
    from prefect.client.orchestration import get_client

    name = f"pg-probe-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_flow_from_name(name)
    dsn = PG_DSN.rsplit("/", 1)[0] + f"/{stack.database}"
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT count(*) FROM flow WHERE name = %s", (name,)).fetchone()
    assert found == (1,)
