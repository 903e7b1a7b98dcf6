"""The host steps run real bash commands in a temporary repository folder."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import uuid

from sevflow import plans
from sevflow.blocks.service import ServiceTarget
from sevflow.errors import CommandFailed, ConfigurationError, DriftError
from sevflow.models import ServiceSpec
from sevflow.tasks.host import MASK, build, deploy, missing_commands, reload_configuration

SECRET = "s3cr3t-Value-9f2c"


pytestmark = pytest.mark.usefixtures("stack")  # the steps read the block's secrets from the server


def make_target(tmp_path: Path, **fields: object) -> ServiceSpec:
    """Save a service target block (as a person would) and return a run's reading of it."""
    name = f"web-{uuid.uuid4().hex[:8]}"
    fields.setdefault("repository", str(tmp_path))
    ServiceTarget(service="web", **fields).save(name)
    return ServiceTarget.load(name).spec(name)


def op(spec: ServiceSpec, kind: str):
    """The command as an approved plan holds it."""
    return plans.command(spec, kind)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def host_log() -> Iterator[list[str]]:
    """What the steps logged (outside a run they log to `prefect.sevflow.tasks.host`)."""
    logger = logging.getLogger("prefect.sevflow.tasks.host")
    handler = _Collect()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # dead, waiting to be reaped by whoever adopted it


def test_build_runs_in_the_repository_and_streams_its_output(tmp_path: Path, host_log: list[str]) -> None:
    target = make_target(
        tmp_path,
        build_command="printf 'compiling\\nlinking\\n'; echo warning >&2; pwd > built.txt; printf done",
    )

    result = build.fn(op(target, "build"), phase="rollback")

    assert result.kind == "build" and result.returncode == 0
    assert result.output_tail.splitlines() == ["compiling", "linking", "warning", "done"]
    assert Path(tmp_path, "built.txt").read_text().strip() == str(tmp_path)
    assert {"build | compiling", "build | linking", "build | warning", "build | done"} <= set(host_log)


def test_build_without_a_command_is_skipped_and_changes_nothing(tmp_path: Path, host_log: list[str]) -> None:
    result = build.fn(op(make_target(tmp_path), "build"), phase="rollback")

    assert result.returncode == 0 and result.command == ""
    assert "skipped" in result.output_tail
    assert list(tmp_path.iterdir()) == []
    assert any("no build command configured" in line.lower() for line in host_log)


@pytest.mark.parametrize(("step", "kind", "field"), [(deploy, "deploy", "deploy_command"),
                                                     (reload_configuration, "reload", "reload_command")])
def test_deploy_and_reload_without_a_command_name_the_field_to_set(tmp_path: Path, step, kind: str, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        step.fn(op(make_target(tmp_path), kind), phase="rollback")


def test_an_edited_block_stops_the_approved_command(tmp_path: Path) -> None:
    spec = make_target(tmp_path, deploy_command="touch deployed")
    approved = op(spec, "deploy")
    ServiceTarget(service="web", repository=str(tmp_path), deploy_command="touch other").save(spec.block, overwrite=True)
    with pytest.raises(DriftError, match="changed since the plan was approved"):
        deploy.fn(approved, phase="rollback")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_repository_is_a_configuration_error(tmp_path: Path) -> None:
    target = make_target(tmp_path, repository=str(tmp_path / "nowhere"), deploy_command="true")
    with pytest.raises(ConfigurationError, match="repository"):
        deploy.fn(op(target, "deploy"), phase="rollback")


def test_a_failing_command_raises_with_its_exit_code_and_last_output(tmp_path: Path) -> None:
    target = make_target(tmp_path, deploy_command="echo starting web; echo 'port 3000 in use' >&2; exit 3")

    with pytest.raises(CommandFailed) as raised:
        deploy.fn(op(target, "deploy"), phase="rollback")

    error = raised.value
    assert error.returncode == 3
    message = str(error)
    assert "exited with code 3" in message
    assert "echo starting web" in message  # the command, as the engineer will search for it
    assert "port 3000 in use" in message
    assert "port 3000 in use" in error.output


def test_a_command_past_its_timeout_is_stopped_with_all_its_children(tmp_path: Path) -> None:
    target = make_target(
        tmp_path,
        command_timeout_seconds=0.5,
        build_command="echo warming up; sleep 30 & echo $! > child.pid; wait",
    )

    with pytest.raises(CommandFailed, match="timed out after 0.5 s") as raised:
        build.fn(op(target, "build"), phase="rollback")

    assert raised.value.returncode is None
    assert "warming up" in raised.value.output
    child = int(Path(tmp_path, "child.pid").read_text())
    # The group was sent SIGTERM then SIGKILL before the step returned; the kernel may take a
    # moment to finish the child off, so look (briefly) rather than sleep a fixed time.
    deadline = time.monotonic() + 2
    while not _is_gone(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _is_gone(child)


def test_a_command_that_leaves_a_process_running_still_returns(tmp_path: Path) -> None:
    # A deploy that starts the server in the background, forgetting to redirect its output:
    # the server holds the output pipe open, and the step must not wait for it.
    # The step would time out (and raise) if it waited for the pipe rather than for the command.
    target = make_target(tmp_path, deploy_command="sleep 30 & echo $! > server.pid; echo started",
                         command_timeout_seconds=10)
    try:
        result = deploy.fn(op(target, "deploy"), phase="rollback")
        assert result.returncode == 0
        assert result.output_tail == "started"
    finally:
        pid_file = Path(tmp_path, "server.pid")
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_command_secrets_reach_the_command_but_nothing_recorded(tmp_path: Path, host_log: list[str]) -> None:
    target = make_target(
        tmp_path,
        command_secrets={"API_TOKEN": SECRET},
        build_command=f'echo "token=$API_TOKEN"; test "$API_TOKEN" = {SECRET} && echo seen; printf %s "$API_TOKEN"',
    )

    result = build.fn(op(target, "build"), phase="rollback")

    assert result.output_tail.splitlines() == [f"token={MASK}", "seen", MASK]
    assert SECRET not in result.model_dump_json()
    assert SECRET not in "\n".join(host_log)
    assert MASK in result.command


def test_a_failing_command_masks_secrets_in_the_error(tmp_path: Path, host_log: list[str]) -> None:
    target = make_target(
        tmp_path,
        command_secrets={"DB_PASSWORD": SECRET},
        reload_command='echo "connecting with $DB_PASSWORD" >&2; exit 1',
    )

    with pytest.raises(CommandFailed) as raised:
        reload_configuration.fn(op(target, "reload"), phase="rollback")

    assert f"connecting with {MASK}" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET not in raised.value.output
    assert SECRET not in "\n".join(host_log)


def test_missing_commands_names_the_unset_fields(tmp_path: Path) -> None:
    target = make_target(tmp_path, build_command="npm run build")

    assert missing_commands(target, ["build", "deploy", "reload"]) == ["deploy_command", "reload_command"]
    assert missing_commands(target, ["build"]) == []
    with pytest.raises(ValueError, match="restart"):
        missing_commands(target, ["restart"])


def test_the_steps_are_named_as_in_the_runbook_and_never_retried() -> None:
    assert [(s.name, s.retries) for s in (build, deploy, reload_configuration)] == [
        ("build", 0),
        ("deploy", 0),
        ("reload configuration", 0),
    ]
