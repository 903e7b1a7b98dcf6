"""The database target block: one production PostgreSQL database sevflow may stop, back up,
restore and swap."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from sevflow.blocks.common import load_named
from sevflow.errors import ConfigurationError
from sevflow.models import DatabaseSpec, IntegrityCheck

# What each migration tool's status and rollback commands are when the block names only the tool.
MIGRATION_TOOLS: dict[str, tuple[str, str]] = {
    "alembic": ("alembic current && alembic history", "alembic downgrade {migration}"),
    "prisma": ("npx prisma migrate status", "npx prisma migrate resolve --rolled-back {migration}"),
    "flyway": ("flyway info", "flyway undo -target={migration}"),
}


class DatabaseTarget(Block):
    """A production PostgreSQL database: how to reach its server (the DSN is a secret), the
    roles the application writes as, the integrity checks that find bad rows, and where its
    backups are (an S3 prefix through a prefect-aws `S3Bucket` block, a local folder).

    sevflow connects with the DSN's role (it must be able to ALTER DATABASE and ALTER ROLE, and
    run pg_dump/pg_restore): to the DSN's own database for server-wide statements, to the live
    database for reads. It never drops a database.
    """

    _block_type_name = "sevflow Database Target"
    _block_type_slug = "sevflow-database-target"
    _description = "A production PostgreSQL database sevflow may stop, back up, restore and swap."

    service: str = Field(description="The service the database belongs to, as alerts and people call it.")
    dsn: SecretStr = Field(
        description="postgresql://user:password@host:port/maintenance-db of a role that may ALTER DATABASE "
        "and ALTER ROLE (the maintenance database is usually `postgres`, never the live one)."
    )
    database: str = Field(description="The live database's name.")
    app_roles: list[str] = Field(
        default_factory=list, description="Roles the application writes as: barred from logging in while writes are stopped."
    )
    integrity_checks: list[IntegrityCheck] = Field(
        default_factory=list, description="Queries returning bad rows, each naming its table."
    )
    timestamp_columns: dict[str, str] = Field(
        default_factory=dict,
        description="table → column holding when a row was last written: tells when corruption started and "
        "which rows are newer than a backup (the gap).",
    )
    s3_bucket_block: str | None = Field(
        default=None, description="Name of the prefect-aws S3 Bucket block holding the backups."
    )
    backup_prefix: str = Field(default="", description="Key prefix (folder) of the backups in that bucket.")
    local_backup_dir: str | None = Field(default=None, description="A folder of local backups (*.dump).")
    restore_jobs: int = Field(default=2, description="pg_restore -j: parallel jobs for a restore.")
    migration_tool: Literal["alembic", "prisma", "flyway", "command"] | None = Field(
        default=None, description="The migration tool; `command` uses the two commands below as given."
    )
    migration_status_command: str | None = Field(default=None, description="Shows migration status.")
    migration_rollback_command: str | None = Field(
        default=None, description="Rolls back one migration; `{migration}` is replaced by its name."
    )
    migration_cwd: str | None = Field(default=None, description="Folder the migration commands run in.")
    command_timeout_seconds: float = Field(default=3600.0, description="Longest a dump, restore or migration may run.")
    connect_timeout_seconds: int = Field(default=10, description="psycopg connect_timeout.")
    statement_timeout_seconds: int = Field(default=600, description="statement_timeout for sevflow's own queries.")
    notification_block: str | None = Field(
        default=None, description="`block-type-slug/name` of the notification block COMMUNICATE sends through."
    )
    approval_policy: str | None = Field(
        default=None, description="The sevflow Approval Policy block that judges this database's changes."
    )

    def conninfo(self, database: str | None = None) -> dict[str, Any]:
        """psycopg connection arguments (the only place the DSN is unwrapped): the maintenance
        database, or `database` on the same server."""
        kwargs: dict[str, Any] = {
            "conninfo": self.dsn.get_secret_value(),
            "connect_timeout": self.connect_timeout_seconds,
            "options": f"-c statement_timeout={self.statement_timeout_seconds * 1000}",
            "application_name": "sevflow",
        }
        if database:
            kwargs["dbname"] = database
        return kwargs

    def libpq_env(self, database: str) -> dict[str, str]:
        """Environment for pg_dump/pg_restore: PG* variables, so no password is on a command line."""
        parts = urlsplit(self.dsn.get_secret_value())
        env = {"PGDATABASE": database, "PGCONNECT_TIMEOUT": str(self.connect_timeout_seconds),
               "PGAPPNAME": "sevflow"}
        if parts.hostname:
            env["PGHOST"] = parts.hostname
        if parts.port:
            env["PGPORT"] = str(parts.port)
        if parts.username:
            env["PGUSER"] = parts.username
        if parts.password:
            env["PGPASSWORD"] = parts.password
        return env

    def server(self) -> str:
        parts = urlsplit(self.dsn.get_secret_value())
        host = parts.hostname or "localhost"
        return urlunsplit(("", f"{host}:{parts.port or 5432}", parts.path, "", "")).lstrip("/")

    def migration_commands(self) -> tuple[str | None, str | None]:
        status, rollback = MIGRATION_TOOLS.get(self.migration_tool or "", (None, None))
        return self.migration_status_command or status, self.migration_rollback_command or rollback

    def spec(self, block_name: str | None = None) -> DatabaseSpec:
        """Every field but the DSN's secret: what a plan is made from."""
        status, rollback = self.migration_commands()
        fields = self.model_dump(mode="json", exclude={"dsn"})
        fields = {k: v for k, v in fields.items() if k in DatabaseSpec.model_fields}
        fields.update(migration_status_command=status, migration_rollback_command=rollback)
        return DatabaseSpec(**fields, block=block_name or getattr(self, "_block_document_name", None) or self.database,
                            server=self.server())

    @classmethod
    def for_name(cls, name: str) -> DatabaseTarget:
        """Load the target named `name`, or say which exist."""
        return load_named(cls, name, what="database target", known_as="databases",
                          hint="Create a `sevflow Database Target` block with that name (Blocks in the Prefect UI).")
