"""What each procedure proposes to change, decided from gathered facts. Pure: no I/O.

A plan is fully resolved before anyone is asked: the commands as strings, the repository,
branch, expected head, the commit and tree (or blob) being restored, the URLs that verify it,
the names of the secrets used; the preconditions that must still hold; how to undo it. The
approver approves that plan (its digest), and the mutating steps take their inputs from it,
never from the block read again later.
"""

from __future__ import annotations

from typing import Literal

from sevflow import markdown as md
from sevflow.models import (
    FailoverCommand,
    GitRestore,
    OutageSpec,
    HealthSpec,
    Plan,
    Precondition,
    ServiceSpec,
    ShellCommand,
)
from sevflow.versions import CommitInfo, ConfigDiff, RollbackPreview, render_preview_markdown


def command(spec: ServiceSpec, kind: Literal["build", "deploy", "reload"]) -> ShellCommand | None:
    """The service's `kind` command as an operation, or None if the block has none."""
    text = {"build": spec.build_command, "deploy": spec.deploy_command, "reload": spec.reload_command}[kind]
    if not text:
        return None
    return ShellCommand(kind=kind, service=spec.service, command=text, cwd=str(spec.repository_path),
                        timeout_seconds=spec.command_timeout_seconds, secret_env=list(spec.secret_env),
                        secrets_block=spec.block, target_fingerprint=spec.fingerprint())


def health(spec: ServiceSpec) -> HealthSpec:
    return HealthSpec(service=spec.service, urls=list(spec.health_check_urls),
                      budget_seconds=spec.health_check_budget_seconds,
                      token_block=spec.block if spec.health_check_token else None)


def head_unchanged(spec: ServiceSpec, head: str) -> Precondition:
    return Precondition(check="git-head", repository=spec.repository, branch=spec.branch, sha=head,
                        description=f"branch {spec.branch} of {spec.repository} is still at {head[:12]}, "
                        "with no local changes")


def target_unchanged(spec: ServiceSpec) -> Precondition:
    return Precondition(check="target-unchanged", target=spec.model_copy(update={"reading": ""}),
                        description=f"the service target block {spec.block!r} is unchanged "
                        f"(fingerprint {spec.fingerprint()[:12]})")


def _secrets(spec: ServiceSpec) -> list[str]:
    return [*spec.secret_env, *(["health_check_token"] if spec.health_check_token else [])]


def _commands(*ops: ShellCommand | None) -> list[ShellCommand]:
    return [op for op in ops if op is not None]


def application_rollback_plan(
    spec: ServiceSpec, good: CommitInfo, preview: RollbackPreview, run_key: str,
) -> Plan:
    return Plan(
        kind="application-rollback",
        title=f"Roll back {spec.service} to {good.short} ({good.subject})",
        target=f"service {spec.service}, repository {spec.repository}, branch {spec.branch}",
        operations=[
            GitRestore(service=spec.service, repository=spec.repository, branch=spec.branch,
                       expected_head=preview.from_sha, source_sha=good.sha, source_tree=preview.to_tree,
                       run_key=run_key, subject=f"Roll back {spec.service} to {good.short}: {good.subject}"),
            *_commands(command(spec, "build"), command(spec, "deploy")),
        ],
        preconditions=[head_unchanged(spec, preview.from_sha), target_unchanged(spec)],
        verify=health(spec),
        undo=f"run application-rollback with version={preview.from_sha[:12]} (the version running now), "
        "or approve the return offered if verification fails",
        details=render_preview_markdown(preview),
        secrets_used=_secrets(spec),
    )


def return_to_previous_plan(
    spec: ServiceSpec, running_before: str, running_before_tree: str, rolled_head: str, run_key: str, why: str,
) -> Plan:
    return Plan(
        kind="return-to-previous-version",
        title=f"Return {spec.service} to {running_before[:12]}, the version running before the rollback",
        target=f"service {spec.service}, repository {spec.repository}, branch {spec.branch}",
        operations=[
            GitRestore(service=spec.service, repository=spec.repository, branch=spec.branch,
                       expected_head=rolled_head, source_sha=running_before, source_tree=running_before_tree,
                       run_key=run_key, subject=f"Return {spec.service} to {running_before[:12]}"),
            *_commands(command(spec, "build"), command(spec, "deploy")),
        ],
        preconditions=[head_unchanged(spec, rolled_head), target_unchanged(spec)],
        verify=health(spec),
        undo=f"run application-rollback with version={rolled_head[:12]}",
        details=f"Verification after the rollback failed: {md.escape(why)}",
        secrets_used=_secrets(spec),
    )


def configuration_rollback_plan(spec: ServiceSpec, diff: ConfigDiff, source: CommitInfo, run_key: str) -> Plan:
    return Plan(
        kind="configuration-rollback",
        title=f"Restore {diff.path} of {spec.service} from {source.short} ({source.subject})",
        target=f"service {spec.service}, repository {spec.repository}, branch {spec.branch}, file {diff.path}",
        operations=[
            GitRestore(service=spec.service, repository=spec.repository, branch=spec.branch,
                       expected_head=diff.head_sha, source_sha=source.sha, source_tree=diff.blob, path=diff.path,
                       run_key=run_key, subject=f"Restore {diff.path} from {source.short}"),
            *_commands(command(spec, "reload")),
        ],
        preconditions=[head_unchanged(spec, diff.head_sha), target_unchanged(spec)],
        verify=health(spec),
        undo=f"run configuration-rollback for {diff.path} with commit={diff.head_sha[:12]}",
        details="\n".join([
            f"**What changed since {source.short}** ({md.code(f'git diff {source.short} HEAD -- {diff.path}')}); "
            "restoring reverses it:",
            "",
            md.fence(diff.diff.strip() or "(no difference)", "diff"),
        ]),
        secrets_used=_secrets(spec),
    )


def profile_unchanged(profile: OutageSpec) -> Precondition:
    return Precondition(check="profile-unchanged", profile=profile.model_copy(update={"reading": ""}),
                        description=f"the outage profile block {profile.block!r} is unchanged "
                        f"(fingerprint {profile.fingerprint()[:12]})")


def failover_plan(profile: OutageSpec, spec: ServiceSpec, dependency: str, dependency_url: str, why: str) -> Plan:
    """Production System Down, "If external: failover": the profile's failover command, run once."""
    if not profile.failover_command:
        raise ValueError(f"outage profile {profile.block!r} has no failover_command")
    cwd = profile.failover_cwd or str(spec.repository_path)
    return Plan(
        kind="failover",
        title=f"Fail {spec.service} over from {dependency} (down)",
        target=f"service {spec.service}, external dependency {dependency} ({dependency_url})",
        operations=[FailoverCommand(service=spec.service, dependency=dependency, command=profile.failover_command,
                                    cwd=cwd, timeout_seconds=spec.command_timeout_seconds,
                                    profile_block=profile.block, profile_fingerprint=profile.fingerprint())],
        preconditions=[profile_unchanged(profile)],
        verify=health(spec),
        undo=f"switch back to {dependency} by hand once it answers again (the failover command's counterpart)",
        details=f"**Why:** {md.escape(why)}",
    )


def hotfix_plan(spec: ServiceSpec, fix: CommitInfo, preview: RollbackPreview, run_key: str, asked_by: str) -> Plan:
    """Production System Down, "If code bug: hotfix": put the named ref's content on the branch
    as one new commit on top of what runs, build, deploy."""
    return Plan(
        kind="hotfix-deploy",
        title=f"Deploy hotfix {fix.short} ({fix.subject}) to {spec.service}",
        target=f"service {spec.service}, repository {spec.repository}, branch {spec.branch}",
        operations=[
            GitRestore(service=spec.service, repository=spec.repository, branch=spec.branch,
                       expected_head=preview.from_sha, source_sha=fix.sha, source_tree=preview.to_tree,
                       run_key=run_key, subject=f"Hotfix {spec.service}: {fix.subject} ({fix.short})"),
            *_commands(command(spec, "build"), command(spec, "deploy")),
        ],
        preconditions=[head_unchanged(spec, preview.from_sha), target_unchanged(spec)],
        verify=health(spec),
        undo=f"run application-rollback with version={preview.from_sha[:12]} (the version running now)",
        details="\n".join([
            f"**Hotfix ref named by:** {md.escape(asked_by)}",
            "",
            f"**What changes from {md.code(preview.from_sha[:12])} (running) to {md.code(fix.short)}:** "
            f"{preview.files_changed} file(s), +{preview.insertions} −{preview.deletions}",
            "",
            md.fence(preview.diff.strip() or "(no difference)", "diff"),
        ]),
        secrets_used=_secrets(spec),
    )
