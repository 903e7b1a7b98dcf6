"""What each procedure proposes to change, decided from gathered facts. Pure: no I/O.

A plan is fully resolved before anyone is asked: the commands as strings, the repository,
branch, expected head, the commit and tree (or blob) being restored, the URLs that verify it,
the names of the secrets used; the preconditions that must still hold; how to undo it. The
approver approves that plan (its digest), and the mutating steps take their inputs from it,
never from the block read again later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sevflow import markdown as md
from sevflow.models import (
    AllowWrites,
    Assessment,
    BackupRef,
    DatabaseSpec,
    MigrationRollback,
    RestoreToScratch,
    StopWrites,
    SwapDatabase,
    Verification,
    WriteState,
    GitRestore,
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


# --- databases (Data Corruption, Database Rollback) ---------------------------------------


def database_unchanged(spec: DatabaseSpec) -> Precondition:
    return Precondition(check="database-target-unchanged", database=spec.model_copy(update={"reading": ""}),
                        description=f"the database target block {spec.block!r} is unchanged "
                        f"(fingerprint {spec.fingerprint()[:12]})")


def databases_present(spec: DatabaseSpec, *names: str) -> Precondition:
    return Precondition(check="databases-present", database=spec.model_copy(update={"reading": ""}),
                        present=list(names), description=f"databases {', '.join(names)} exist on {spec.server}")


def stop_writes_plan(spec: DatabaseSpec, state: WriteState, run_key: str) -> Plan:
    roles = sorted(r for r, login in state.roles_login.items() if login)
    return Plan(
        kind="stop-writes",
        title=f"Stop writes to {spec.database} ({spec.service})",
        target=f"database {spec.database} on {spec.server}",
        operations=[StopWrites(block=spec.block, database=spec.database, roles=roles, run_key=run_key)],
        preconditions=[database_unchanged(spec)],
        undo=f"ALTER DATABASE {spec.database} RESET default_transaction_read_only; "
        + "".join(f"ALTER ROLE {r} LOGIN; " for r in roles)
        + "(the procedure offers this after a rejected swap)",
        details="\n".join([
            f"Now: read-only default {'on' if state.read_only_default else 'off'}, "
            f"{state.sessions} client session(s); roles that can log in: {', '.join(roles) or 'none'}.",
            "",
            "Reads by other roles go on (read-only). The application roles cannot log in anywhere on this "
            "server until writes are allowed again.",
        ]),
    )


def pick_backup(backups: list[BackupRef], started_at: datetime | None, named: str | None) -> BackupRef | None:
    """The backup named (its key or file name), else the newest taken before the corruption
    started (the newest at all if that is unknown). Forensic dumps of this procedure never count
    as good."""
    if named:
        return next((b for b in backups if b.key == named or b.key.rsplit("/", 1)[-1] == named), None)
    good = [b for b in backups if "-forensic-" not in b.key and (started_at is None or b.taken_at < started_at)]
    return max(good, key=lambda b: b.taken_at, default=None)


def scratch_name(spec: DatabaseSpec, run_key: str) -> str:
    return f"{spec.database}_restore_{run_key.replace('-', '')[:8]}"[:63]


def restore_plan(spec: DatabaseSpec, assessment: Assessment | None, backup: BackupRef, run_key: str) -> Plan:
    scratch = scratch_name(spec, run_key)
    found = ""
    if assessment is not None:
        found = "\n".join([
            "**What the integrity checks found in the live database:**",
            "",
            *[f"- {md.escape(c.name)} ({md.code(c.table)}): {c.bad_rows} bad rows" for c in assessment.checks],
            "",
            f"Corruption started: {assessment.started_at.isoformat() if assessment.started_at else 'unknown'}",
            "",
            "**Backups, newest first:**",
            "",
            *[f"- {md.escape(b.label)}{'  ← this one' if b.key == backup.key else ''}" for b in assessment.backups],
        ])
    return Plan(
        kind="restore-to-scratch",
        title=f"Restore {spec.database} from the backup of {backup.taken_at:%Y-%m-%d %H:%M:%S} UTC into {scratch}",
        target=f"new database {scratch} on {spec.server} (the live database {spec.database} is not touched)",
        operations=[RestoreToScratch(block=spec.block, backup=backup, scratch=scratch, jobs=spec.restore_jobs,
                                     run_key=run_key)],
        preconditions=[database_unchanged(spec)],
        undo=f"nothing to undo on {spec.database}; {scratch} is a new database (sevflow never drops one: "
        f"DROP DATABASE {scratch} by hand when done)",
        details=found,
    )


def swap_plan(spec: DatabaseSpec, verification: Verification, stopped_roles: list[str], run_key: str,
              now: datetime) -> Plan:
    keep_as = f"{spec.database}_corrupt_{now:%Y%m%d%H%M%S}"[:63]
    differing = verification.differing_tables()
    lines = [
        f"**Restored copy {md.code(verification.restored)}**: integrity checks "
        + ("clean" if verification.clean else "**NOT clean**: " + ", ".join(
            f"{c.name} {c.bad_rows}" for c in verification.checks if c.bad_rows)),
        "",
        "| table | live rows | restored rows | same checksum |",
        "|---|---|---|---|",
    ]
    restored = {t.table: t for t in verification.restored_tables}
    for t in verification.live_tables:
        r = restored.get(t.table)
        lines.append(f"| {md.escape(t.table)} | {t.rows} | {r.rows if r else '—'} | "
                     f"{'yes' if r and r.checksum == t.checksum else 'no'} |")
    lines += ["", f"**Gap: what the swap loses** (rows written in {spec.database} after the backup of "
              f"{verification.backup_taken_at:%Y-%m-%d %H:%M:%S} UTC):", ""]
    lines += [f"- {md.escape(g.table)}: {g.rows} rows (by {md.code(g.column)}; newest "
              f"{g.newest.isoformat() if g.newest else '—'})" for g in verification.gap] or ["- no timestamp columns configured"]
    for table in differing:
        chunks = verification.differing_chunks(table)
        if chunks:
            lines.append(f"- {md.escape(table)} differs in key ranges starting at {', '.join(chunks[:20])}")
    return Plan(
        kind="swap-database",
        title=f"Swap the restored copy in as {spec.database} and allow writes again",
        target=f"databases {spec.database} and {verification.restored} on {spec.server}",
        operations=[
            SwapDatabase(block=spec.block, live=spec.database, restored=verification.restored, keep_as=keep_as,
                         run_key=run_key),
            AllowWrites(block=spec.block, database=spec.database, roles=stopped_roles, run_key=run_key),
        ],
        preconditions=[database_unchanged(spec), databases_present(spec, spec.database, verification.restored)],
        undo=f"swap back: ALTER DATABASE {spec.database} RENAME TO <other>; ALTER DATABASE {keep_as} RENAME TO "
        f"{spec.database} (the corrupted database is kept as {keep_as}; sevflow never drops it)",
        details="\n".join(lines),
    )


def allow_writes_plan(spec: DatabaseSpec, stopped_roles: list[str], run_key: str, why: str) -> Plan:
    return Plan(
        kind="allow-writes",
        title=f"Allow writes to {spec.database} again, unchanged (no swap)",
        target=f"database {spec.database} on {spec.server}",
        operations=[AllowWrites(block=spec.block, database=spec.database, roles=stopped_roles, run_key=run_key)],
        preconditions=[database_unchanged(spec)],
        undo="run data-corruption again to stop writes",
        details=md.escape(why),
    )


def migration_rollback_plan(spec: DatabaseSpec, migration: str, status: str) -> Plan:
    assert spec.migration_rollback_command
    command = spec.migration_rollback_command.replace("{migration}", migration)
    return Plan(
        kind="migration-rollback",
        title=f"Roll back migration {migration} of {spec.database}",
        target=f"database {spec.database} on {spec.server}, with {spec.migration_tool or 'the configured commands'}",
        operations=[MigrationRollback(block=spec.block, migration=migration, command=command,
                                      cwd=spec.migration_cwd or ".", timeout_seconds=spec.command_timeout_seconds,
                                      status_before=status)],
        preconditions=[database_unchanged(spec)],
        undo=f"apply migration {migration} again with the migration tool",
        details="**Migration status now:**\n\n" + md.fence(status or "(no output)"),
    )
