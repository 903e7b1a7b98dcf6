"""Running the service's own commands on this machine: build, deploy, reload configuration.

Each command is the block's shell text (the runbook's `npm run build`, `npm start`), run with
`bash -c` in the service's repository, with the block's command secrets added to the
environment. Output is streamed to the run's log line by line as progress, with every secret
the block holds masked; the same masked lines are the only output sevflow records.

A command has a finite time (the block's `command_timeout_seconds`); past it, its whole
process group is stopped and the step fails. A command that leaves a process running (a
server started in the background) must send that process's output elsewhere, e.g.
`nohup npm start >app.log 2>&1 &`: sevflow stops reading shortly after the command itself
exits, and a foreground `npm start` never exits, so it is stopped at the timeout.
"""

from __future__ import annotations

import logging
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from collections import deque
from typing import Callable, Literal

from prefect.exceptions import MissingContextError
from prefect.logging.loggers import get_logger, get_run_logger
from pydantic import BaseModel, Field

from pathlib import Path

from sevflow.blocks.service import ServiceTarget
from sevflow.errors import CommandFailed, ConfigurationError, DriftError
from sevflow.models import FailoverCommand, PatchCommand, ServiceSpec, ShellCommand
from sevflow.tasks.common import step
from sevflow.tasks.targets import load_secrets

CommandKind = Literal["build", "deploy", "reload", "failover", "cache", "patch"]

MASK = "********"

# Which block field holds each kind of command (named in errors and preflight reports).
COMMAND_FIELDS: dict[CommandKind, str] = {
    "build": "build_command",
    "deploy": "deploy_command",
    "reload": "reload_command",
}

_TAIL_LINES = 40  # kept in the result
_ERROR_TAIL_LINES = 20  # quoted in a failure message
_POLL_SECONDS = 0.1  # how often the deadline is checked while a command is silent
_DRAIN_SECONDS = 1.0  # how long to keep reading after the command exited (see module doc)
_KILL_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL when a command times out
_MAX_LINE_BYTES = 64 * 1024  # a longer line without a newline is logged in pieces


class CommandResult(BaseModel):
    """What one command did: the command as shown to people (secrets masked), its exit code,
    how long it took and the last lines of its output (masked)."""

    kind: CommandKind
    command: str
    returncode: int
    duration_seconds: float
    output_tail: str = Field(default="", description=f"last {_TAIL_LINES} lines, secrets masked")


def mask_secrets(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of each secret replaced by ``********``."""
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def missing_commands(target: ServiceTarget | ServiceSpec, needed: list[str]) -> list[str]:
    """The block fields (e.g. ``deploy_command``) that `needed` kinds of command
    ("build", "deploy", "reload") require and the block leaves unset. Pure, for preflight."""
    unknown = [kind for kind in needed if kind not in COMMAND_FIELDS]
    if unknown:
        raise ValueError(f"unknown command kinds {unknown}: use {', '.join(COMMAND_FIELDS)}")
    return [
        COMMAND_FIELDS[kind]  # type: ignore[index]
        for kind in needed
        if not getattr(target, COMMAND_FIELDS[kind])  # type: ignore[index]
    ]


_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
_KEYWORDS = {"!", "{", "}", "if", "then", "do", "else", "elif", "fi", "while", "until", "done", "time", "esac"}
# Programs that start the next word as a program: that word is checked too.
_WRAPPERS = {"nohup", "exec", "command", "env", "sudo", "timeout", "xargs", "nice"}


def programs_of(command: str) -> list[str]:
    """The programs a shell command line starts (the word at each command position), for
    preflight. Pure; variable words (`$X`), assignments (`A=b`), options and numbers after a
    wrapper (`timeout 30 npm`) are not programs."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return []  # unbalanced quotes: bash itself will say so when it runs
    found: list[str] = []
    expect, after_wrapper = True, False
    for token in tokens:
        if token in _SEPARATORS:
            expect, after_wrapper = True, False
            continue
        if not expect:
            continue
        if token in _KEYWORDS or "=" in token.split("/")[0] \
                or (after_wrapper and (token.startswith("-") or token.replace(".", "").isdigit())):
            continue  # still before the program's name
        if "$" not in token and "`" not in token:
            found.append(token)
        after_wrapper = token in _WRAPPERS
        expect = after_wrapper
    return list(dict.fromkeys(found))


def command_problems(target: ServiceSpec, kinds: list[str]) -> list[str]:
    """For each of the service's `kinds` of command (build, deploy, reload) it has: each
    program it starts that bash on this worker cannot find (in the checkout, on PATH). A
    sentence each saying what to fix. Runs nothing but `type`; changes nothing."""
    cwd = target.repository_path
    problems: list[str] = []
    for kind in kinds:
        field_name = COMMAND_FIELDS[kind]  # type: ignore[index]
        text = getattr(target, field_name)
        if not text:
            continue
        for program in programs_of(text):
            found = subprocess.run(["bash", "-c", 'type -t -- "$1"', "type", program], cwd=cwd if cwd.is_dir() else None,
                                   capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
            if not found.stdout.strip():
                problems.append(f"`{program}` (in `{field_name}`) is not a command on this worker (PATH "
                                f"{os.environ.get('PATH', '')}): install it here, or fix `{field_name}` in the "
                                f"{target.block!r} service target block")
    return problems


def disk_problems(target: ServiceSpec) -> list[str]:
    """Whether the checkout's filesystem has the free space the block says a build needs.
    Changes nothing."""
    where = target.repository_path
    while not where.exists() and where != where.parent:
        where = where.parent
    free_mb = shutil.disk_usage(where).free // (1024 * 1024)
    if free_mb >= target.build_disk_space_mb:
        return []
    return [f"only {free_mb} MB free on the filesystem of {target.repository_path}, and a build of "
            f"{target.service} needs {target.build_disk_space_mb} MB (`build_disk_space_mb` in the "
            f"{target.block!r} service target block): free some space there first"]


@step("build", mutating=True)
def build(op: ShellCommand | None, phase: str, at: str | None = None) -> CommandResult:
    """Build the service in its repository (runbook: `npm run build`): runs the approved
    plan's build command. A plan without one has nothing to build; the step says it skipped.
    `phase` (the gate that approved it) tells apart two builds in one run. `at`: the commit this
    run made (its rollback commit); on a remote repository the command runs at exactly that
    commit, whatever was pushed to the branch since."""
    if op is None:
        # Some services deploy straight from source; a missing build is not an error.
        _logger().info("No build command configured (none in the approved plan): skipping the build")
        return CommandResult(kind="build", command="", returncode=0, duration_seconds=0.0,
                             output_tail="skipped: no build command configured")
    return _run_approved(op, "build", at)


@step("deploy", mutating=True, milestone="Fix deployed")
def deploy(op: ShellCommand | None, phase: str, at: str | None = None) -> CommandResult:
    """Start the checked-out version of the service (runbook: `npm start`): runs the approved
    plan's deploy command, which must return once the new version runs."""
    return _run_approved(_required(op, "deploy"), "deploy", at)


@step("reload configuration", mutating=True, milestone="Fix deployed")
def reload_configuration(op: ShellCommand | None, phase: str, at: str | None = None) -> CommandResult:
    """Make the running service re-read its configuration: the approved plan's reload command."""
    return _run_approved(_required(op, "reload"), "reload", at)


@step("fail over", mutating=True, milestone="Fix deployed")
def fail_over(op: FailoverCommand, phase: str) -> CommandResult:
    """Switch the service away from a dead external dependency: runs the approved plan's
    failover command, once sure the outage profile it came from is unchanged. Never retried."""
    from sevflow.blocks.outage import OutageProfile

    try:
        live = OutageProfile.load(op.profile_block)
    except ValueError:
        live = None
    if live is None or live.spec(op.profile_block).fingerprint() != op.profile_fingerprint:  # type: ignore[attr-defined]
        raise DriftError(
            f"The failover command was not run: the outage profile {op.profile_block!r} changed (or was deleted) "
            "since the plan was approved. Nothing was changed; run the procedure again to review the new plan."
        )
    return run_command("failover", op.command, Path(op.cwd), {}, live.secret_values(), op.timeout_seconds,  # type: ignore[attr-defined]
                       op.service)


@step("REMEDIATE: patch vulnerability", mutating=True, milestone="Fix deployed")
def run_patch(op: PatchCommand) -> CommandResult:
    """Run the approved patch command (exactly as approved, no secrets in its environment)."""
    return run_command("patch", op.command, Path(os.path.expanduser(op.cwd)), {}, [], op.timeout_seconds,
                       service="patch")


def _required(op: ShellCommand | None, kind: CommandKind) -> ShellCommand:
    if op is None:
        raise ConfigurationError(
            f"The plan has no {kind} command: set `{COMMAND_FIELDS[kind]}` on the service's "
            "sevflow Service Target block, then run the procedure again."
        )
    return op


def _run_approved(op: ShellCommand, kind: CommandKind, at: str | None = None) -> CommandResult:
    """Run exactly the approved command, once sure the block it came from is unchanged."""
    if op.kind != kind:
        raise ConfigurationError(f"The {kind} step was handed the plan's {op.kind} command.")
    moved = target_changes_of(op)
    if moved:
        raise DriftError(
            f"The {kind} command was not run: the service target block {op.secrets_block!r} changed since "
            f"the plan was approved ({'; '.join(moved)}). Nothing more was changed; run the procedure "
            "again to review and approve the new plan."
        )
    env, secrets = load_secrets(op.secrets_block, op.secret_env)
    cwd = Path(op.cwd)
    if op.repository:
        # A remote repository: this worker's own checkout of it (the plan may have been made,
        # and the rollback pushed, by another worker), at the commit this run made: a commit
        # someone pushed after it was never approved, so it is not what gets built.
        from sevflow.tasks.git import local_checkout

        cwd = local_checkout(op.repository, op.branch or "main", op.service, op.credentials_block, at=at)
    return run_command(kind, op.command, cwd, env, secrets, op.timeout_seconds, op.service)


def target_changes_of(op: ShellCommand) -> list[str]:
    from sevflow.blocks.service import ServiceTarget

    try:
        live = ServiceTarget.load(op.secrets_block)
    except RuntimeError:  # Prefect's "failed validation"
        return [f"the block {op.secrets_block!r} was edited and is no longer valid"]
    except ValueError:
        return [f"the block {op.secrets_block!r} was deleted"]
    if live.spec(op.secrets_block).fingerprint() == op.target_fingerprint:  # type: ignore[attr-defined]
        return []
    return ["its fields differ from the plan's"]


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    # Inside a run the lines belong in the run's log (the UI shows them as progress);
    # called outside one (tests, the command line), they go to an ordinary logger.
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sevflow.tasks.host")


def run_command(kind: CommandKind, command: str, cwd: Path, env: dict[str, str], secrets: list[str],
                timeout: float, service: str = "", phase: str = "") -> CommandResult:
    """Run `command` with bash in `cwd`; stream, mask, time-limit it."""
    logger = _logger()
    shown = mask_secrets(command, secrets)
    if not cwd.is_dir():
        raise ConfigurationError(
            f"Service {service!r}: repository {str(cwd)!r} is not a directory; "
            "set `repository` on its sevflow Service Target block."
        )
    tail: deque[str] = deque(maxlen=_TAIL_LINES)

    def emit(raw: bytes) -> None:
        line = mask_secrets(raw.decode("utf-8", errors="replace"), secrets).rstrip("\r")
        # Progress bars redraw with carriage returns; keep what a terminal would show.
        line = line.rsplit("\r", 1)[-1]
        tail.append(line)
        logger.info("%s | %s", kind, line)

    logger.info("Running %s command in %s: %s", kind, cwd, shown)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,  # a command that asks a question must fail, not hang
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
        start_new_session=True,  # its own process group, so a timeout stops all of it
    )
    try:
        finished = _pump_output(proc, started + timeout, emit)
        if not finished:
            _stop_process_group(proc)
    finally:
        # Whatever interrupted us (cancellation included), nothing is left running.
        if proc.poll() is None:
            _stop_process_group(proc)
        assert proc.stdout is not None
        proc.stdout.close()
    duration = time.monotonic() - started
    output_tail = mask_secrets("\n".join(tail), secrets)
    last_lines = "\n".join(output_tail.splitlines()[-_ERROR_TAIL_LINES:]) or "(no output)"

    if not finished:
        logger.error("%s command timed out after %g s and was stopped", kind, timeout)
        raise CommandFailed(
            f"The {kind} command timed out after {timeout:g} s and was stopped "
            f"(its whole process group): `{shown}` in {cwd}. Raise `command_timeout_seconds` "
            f"on the service target block if it needs longer. Last output:\n{last_lines}",
            returncode=None,
            output=output_tail,
        )
    returncode = proc.returncode
    if returncode != 0:
        logger.error("%s command exited with code %d after %.1f s", kind, returncode, duration)
        raise CommandFailed(
            f"The {kind} command `{shown}` in {cwd} exited with code {returncode}. "
            f"Last output:\n{last_lines}",
            returncode=returncode,
            output=output_tail,
        )
    logger.info("%s command finished in %.1f s (exit code 0)", kind, duration)
    return CommandResult(
        kind=kind,
        command=shown,
        returncode=returncode,
        duration_seconds=round(duration, 3),
        output_tail=output_tail,
    )


def _pump_output(proc: subprocess.Popen[bytes], deadline: float, emit: Callable[[bytes], None]) -> bool:
    """Hand each output line to `emit` until the command exits; False if the deadline passed first."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    reading = True
    exited_at: float | None = None
    finished = False
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                exited_at = exited_at if exited_at is not None else now
                # A background process may still hold the pipe: read only a little longer.
                if not reading or now - exited_at >= _DRAIN_SECONDS:
                    finished = True
                    break
            elif now >= deadline:
                break
            if not reading:
                # The command closed its output but is still running: just wait for it.
                try:
                    proc.wait(timeout=max(deadline - now, 0.0))
                except subprocess.TimeoutExpired:
                    break
                continue
            until = deadline if exited_at is None else exited_at + _DRAIN_SECONDS
            if not selector.select(timeout=max(min(_POLL_SECONDS, until - now), 0.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                reading = False
                selector.unregister(fd)
                continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                emit(line)
            if len(pending) > _MAX_LINE_BYTES:
                emit(pending)
                pending = b""
    if pending:
        emit(pending)
    return finished


def _stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, then SIGKILL whatever is left after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=_KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    try:
        # Children that ignored SIGTERM (or outlived bash) go too.
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
