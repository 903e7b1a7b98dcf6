"""Rollback: Database (EMERGENCY-PROCEDURES.md, "Database Rollback").

    npx prisma migrate status                              list migrations (or alembic, flyway, any command)
    npx prisma migrate resolve --rolled-back <migration>   roll back the migration (gated)
    pg_restore -d database_name backup_file                or restore from a backup: into a separate
                                                           database first, verified, then swapped in (gated)

The restore is Data Corruption's own steps (`restore_verify_swap`), not a copy.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from prefect import flow
from prefect.states import Failed, State
from pydantic import BaseModel

from sevflow import plans
from sevflow.errors import ConfigurationError
from sevflow.flows.data_corruption import DataRecoveryReport, approved_spec, plan_stop_writes, restore_verify_swap
from sevflow.kit import Plan, Procedure, ProcedureEnd, Severity, begin, procedure_parameters, publish_records, run
from sevflow.tasks.postgres import backup_current_state, migration_status, roll_back_migration, stop_writes
from sevflow.tasks.s3 import find_backups
from sevflow.tasks.targets import read_database_target

PROCEDURE = "database-rollback"


class MigrationRollbackReport(BaseModel):
    incident_id: str
    database: str
    migration: str
    status_before: str
    status_after: str
    plan_digest: str


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
@procedure_parameters
def database_rollback(
    service: str,
    migration: str | None = None,
    backup: str | None = None,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
    dry_run: bool = False,
) -> MigrationRollbackReport | DataRecoveryReport | State:
    """Roll a database back, after approval: one migration, or the whole database to a backup.

    With `migration`: shows the migration tool's status, waits for approval, runs the tool's
    rollback of that migration and shows the status after. Without: stops writes, dumps the
    current state for forensics, restores the backup (named, or the newest) into a separate
    database, verifies it against the live one and swaps it in (Data Corruption's steps 4-5).

    Args:
        service: Name of the `sevflow Database Target` block of the database (as alerts name the service).
        migration: The migration to roll back (as the migration tool names it); empty to restore from a backup.
        backup: Key (or file name) of the backup to restore; empty for the newest.
    """
    spec = read_database_target(service)  # an unknown database target stops here, before anything
    ctx = begin(PROCEDURE, spec.service, severity, incident_id, reason, policy, dry_run, spec.approval_policy)
    if migration:
        return run(ctx, roll_back_one_migration, service, migration)
    return run(ctx, restore_database, service, backup)


def roll_back_one_migration(ctx: Procedure, database: str, migration: str) -> MigrationRollbackReport:
    """(a) Migrations: status, approval, rollback, verify."""
    plan = ctx.approve(lambda reading: plan_migration_rollback(database, migration, reading), gate="migration")
    op = plan.operation("migration-rollback")
    roll_back_migration(op)
    after = migration_status(approved_spec(plan), phase="after")
    summary = (f"Rolled back migration {migration} of {op.block} with {op.command!r} (plan {plan.digest[:12]}).")
    if after == op.status_before:
        message = summary + " The migration status did not change: check the tool's output in the run's logs."
        raise ProcedureEnd("verification failed", message, [message], Failed, "VerificationFailed")
    publish_records(ctx.incident, "resolved", [summary, "Migration status after:\n" + after],
                    ["Immediate fix applied", "System verified working"])
    return MigrationRollbackReport(incident_id=ctx.incident.incident_id, database=op.block, migration=migration,
                                   status_before=op.status_before, status_after=after, plan_digest=plan.digest)


def plan_migration_rollback(database: str, migration: str, reading: str) -> Plan:
    spec = read_database_target(database, reading)
    if not spec.migration_rollback_command or not spec.migration_status_command:
        raise ConfigurationError(f"Database target {spec.block!r} names no migration tool: set migration_tool "
                                 "(alembic, prisma, flyway) or both migration commands. Nothing was changed.")
    return plans.migration_rollback_plan(spec, migration, migration_status(spec))


def restore_database(ctx: Procedure, database: str, backup: str | None) -> DataRecoveryReport:
    """(b) Restore from a backup: stop writes, keep the current state, then Data Corruption's
    restore, verify and swap."""
    stop = ctx.approve(lambda reading: plan_stop_writes(ctx, database, reading), gate="stop-writes")
    stopped = stop_writes(stop.operation("stop-writes"))
    spec = approved_spec(stop)
    backups = [b for b in find_backups(spec) if "-forensic-" not in b.key]
    forensic = backup_current_state(spec, ctx.run_key, stopped.checked_at)
    return restore_verify_swap(ctx, spec, stop, backups, None, backup or (backups[0].key if backups else None),
                               forensic, stopped_at=stopped.checked_at)
