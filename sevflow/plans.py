"""What each procedure proposes to change, decided from gathered facts. Pure: no I/O.

A proposal states the change, where, the exact commands, and how to undo it: that text is
what the approver reads in the Resume form and in the notification.
"""

from __future__ import annotations

from sevflow.models import ProposedChange
from sevflow.versions import CommitInfo, ConfigDiff, RollbackPreview, render_preview_markdown


def _commands(build: str | None, deploy: str | None) -> list[str]:
    return [c for c in (build, deploy) if c]


def application_rollback_change(
    service: str, repository: str, branch: str, good: CommitInfo, preview: RollbackPreview,
    build_command: str | None, deploy_command: str | None,
) -> ProposedChange:
    return ProposedChange(
        kind="application-rollback",
        title=f"Roll back {service} to {good.short} ({good.subject})",
        target=f"service `{service}`, repository `{repository}`, branch `{branch}`",
        commands=[
            f"git commit-tree {good.short}^{{tree}} -p {preview.from_sha[:12]}   "
            f"# new commit with the tree of {good.short}; history is not rewritten",
            "git merge --ff-only <that commit>",
            *_commands(build_command, deploy_command),
        ],
        undo=f"run `application-rollback` with version={preview.from_sha[:12]} (the version running now), "
        "or approve the return offered if verification fails",
        details=render_preview_markdown(preview),
    )


def return_to_previous_change(
    service: str, repository: str, branch: str, running_before: str, rolled_back_to: str,
    build_command: str | None, deploy_command: str | None, why: str,
) -> ProposedChange:
    return ProposedChange(
        kind="return-to-previous-version",
        title=f"Return {service} to {running_before[:12]}, the version running before the rollback",
        target=f"service `{service}`, repository `{repository}`, branch `{branch}`",
        commands=[
            f"git commit-tree {running_before[:12]}^{{tree}} -p HEAD   # again a new commit, no history rewritten",
            "git merge --ff-only <that commit>",
            *_commands(build_command, deploy_command),
        ],
        undo=f"run `application-rollback` with version={rolled_back_to[:12]}",
        details=f"Verification after the rollback failed: {why}",
    )


def configuration_rollback_change(
    service: str, repository: str, branch: str, diff: ConfigDiff, source: CommitInfo, reload_command: str | None,
) -> ProposedChange:
    return ProposedChange(
        kind="configuration-rollback",
        title=f"Restore {diff.path} of {service} from {source.short} ({source.subject})",
        target=f"service `{service}`, repository `{repository}`, branch `{branch}`, file `{diff.path}`",
        commands=[
            f"git checkout {source.short} -- {diff.path}",
            f"git commit -m 'Restore {diff.path} from {source.short}' -- {diff.path}",
            *([reload_command] if reload_command else []),
        ],
        undo=f"run `configuration-rollback` for {diff.path} with commit={diff.head_sha[:12]}",
        details="\n".join([
            f"**What changed since {source.short}** (`git diff {source.short} HEAD -- {diff.path}`); "
            "restoring reverses it:",
            "",
            "```diff",
            diff.diff.strip() or "(no difference)",
            "```",
        ]),
    )
