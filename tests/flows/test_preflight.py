"""Preflight before the gate: what a change needs and can be checked without changing
anything is checked before anyone is asked; a failed preflight ends the run there, every
problem named with what to fix. Real worker, real repository, real shell."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sevflow.tasks.host import programs_of
from tests.conftest import Service, start, wait_final
from tests.support.repos import git


def _state_types(run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [s.type.value for s in client.read_flow_run_states(uuid.UUID(run_id))]


def test_failed_preflight_stops_before_the_gate_naming_every_fix(service: Service, worker: Any) -> None:
    repo = service.repo
    # Three things an approved rollback would trip over: a deploy program this machine does not
    # have, more free space than any disk has, and no git identity for the rollback commit.
    service.save_target(deploy_command="sevflow-no-such-deployer --now", build_disk_space_mb=10**9)
    git(repo.path, "config", "user.name", "")
    before = repo.snapshot()

    run_id = start("application-rollback", service=service.name, policy=service.policy)
    final = wait_final(run_id)

    assert final.state.name == "PreflightFailed", final.state.message
    message = final.state.message
    assert "nothing was asked for and nothing was changed" in message
    assert "`sevflow-no-such-deployer` (in `deploy_command`)" in message
    assert "build_disk_space_mb" in message
    assert "no usable identity" in message and "git config --global user.name" in message
    assert "PAUSED" not in _state_types(run_id)  # nobody was asked
    assert repo.snapshot() == before
    assert service.app.deployed() == "version 3 unhealthy"


def test_configuration_rollback_checks_its_reload_command(service: Service, worker: Any) -> None:
    service.save_target(reload_command="./reload-config.sh")  # not in the repository
    before = service.repo.snapshot()
    run_id = start("configuration-rollback", service=service.name, policy=service.policy)
    final = wait_final(run_id)
    assert final.state.name == "PreflightFailed", final.state.message
    assert "`./reload-config.sh` (in `reload_command`)" in final.state.message
    assert "PAUSED" not in _state_types(run_id)
    assert service.repo.snapshot() == before


@pytest.mark.parametrize("command, programs", [
    ("mkdir -p build && cp app.txt build/ && cp config/app.env build/", ["mkdir", "cp"]),
    ("FOO=1 nohup ./start.sh >app.log 2>&1 &", ["nohup", "./start.sh"]),
    ("timeout 30 npm run build | tee build.log", ["timeout", "npm", "tee"]),
    ("if test -f x; then make; else echo none; fi", ["test", "make", "echo"]),
    ("$DEPLOYER --now; `which deploy`", []),
])
def test_programs_a_command_line_starts(command: str, programs: list[str]) -> None:
    assert programs_of(command) == programs
