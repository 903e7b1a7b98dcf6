"""Preflight: everything a change needs that can be checked without changing anything,
checked before anyone is asked to approve it.

An approved change must not fail for a reason that was knowable before: git's identity for
the rollback commit, write access to the checkout, the remote reachable and accepting a push,
the programs the build, deploy and reload commands start, free space for a build. A planner
calls :func:`preflight` after gathering its facts; if anything is missing the procedure ends
here (state `PreflightFailed`), every problem listed with what to fix, nothing asked or changed.
"""

from __future__ import annotations

from typing import Literal

from prefect.states import Failed

from sevflow.kit.procedure import ProcedureEnd
from sevflow.models import ServiceSpec
from sevflow.tasks.common import step
from sevflow.tasks.git import commit_problems
from sevflow.tasks.host import command_problems, disk_problems

PREFLIGHT_FAILED = "PreflightFailed"

CommandKind = Literal["build", "deploy", "reload"]


class PreflightFailed(ProcedureEnd):
    """Something the change needs is missing: nothing was asked for and nothing was changed."""

    def __init__(self, service: str, problems: list[str]) -> None:
        listed = "\n".join(f"- {p}" for p in problems)
        message = (f"Preflight for {service} found {len(problems)} problem(s) before asking for approval; "
                   f"nothing was asked for and nothing was changed. Fix, then run the procedure again:\n{listed}")
        super().__init__("preflight failed", message, [message], Failed, PREFLIGHT_FAILED)


@step("preflight: check what the change needs", timeline=False)
def preflight_problems(spec: ServiceSpec, commands: list[CommandKind], commits: bool = True) -> list[str]:
    """Every problem that would stop the change, a sentence each saying what to fix (empty
    when all is well). Persisted per run and reading, like the facts it checks. Changes nothing."""
    problems = commit_problems(spec) if commits else []
    problems += command_problems(spec, list(commands))
    if "build" in commands and spec.build_command:
        problems += disk_problems(spec)
    return problems


def preflight(spec: ServiceSpec, commands: list[CommandKind], commits: bool = True) -> None:
    """Check what a change of `spec`'s service needs (a git commit if `commits`, the
    `commands` it will run); raise PreflightFailed listing every problem."""
    problems = preflight_problems(spec, commands, commits)
    if problems:
        raise PreflightFailed(spec.service, problems)
