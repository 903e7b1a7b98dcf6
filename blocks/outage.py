"""The outage profile block: how Production System Down looks at, talks about and fails over
one service."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from sevflow.blocks.common import load_named
from sevflow.errors import ConfigurationError
from sevflow.models import OutageSpec


class OutageProfile(Block):
    """How `production-system-down` handles one service: the vantage points it verifies an
    outage from, the control URL that rules out a local problem, whom it tells (Prefect
    notification blocks, a status page webhook), where its logs are, the external
    dependencies it checks and the failover command it may propose (each behind approval),
    and how long it watches a fix. Loaded by the service's name unless the run names another.

    The status page token is sent only in the request's Authorization header and never logged.
    """

    _block_type_name = "sevflow Outage Profile"
    _block_type_slug = "sevflow-outage-profile"
    _description = "Vantage points, control URL, status page, logs, dependencies and failover of one service."

    service: str = Field(description="The service (its sevflow Service Target block's name).")
    probe_endpoints: list[str] = Field(
        default_factory=list,
        description="External probe or status endpoints, asked `GET <endpoint>?url=<health URL>`; "
        "they answer 2xx when that URL answers healthy from where they are.",
    )
    control_url: str = Field(description="A URL that always answers 2xx (rules out a problem on this machine).")
    status_page_webhook: str | None = Field(default=None, description="Where status updates are POSTed (JSON).")
    status_page_token: SecretStr | None = Field(default=None, description="Bearer token for the status page.")
    notification_blocks: list[str] = Field(
        default_factory=list, description="Prefect notification blocks to tell stakeholders, as `slug/name`.")
    log_file: str | None = Field(default=None, description="A log file to read the end of.")
    log_command: str | None = Field(default=None, description="A read-only command printing recent logs.")
    log_url: str | None = Field(default=None, description="A URL answering recent logs as text.")
    log_lines: int = Field(default=200, ge=1, description="How many recent log lines to read.")
    error_pattern: str = Field(default="", description="Regular expression for error lines; empty for a default.")
    dependencies: dict[str, str] = Field(
        default_factory=dict, description="External dependencies: name → health URL.")
    dependent_services: dict[str, str] = Field(
        default_factory=dict, description="Services that depend on this one: name → health URL.")
    users_metric_url: str | None = Field(
        default=None, description="Answers the number of users affected (a number, or JSON with `value`).")
    deploy_window_seconds: float = Field(
        default=3600.0, description="Deploys this long before the outage started count as recent.")
    failover_command: str | None = Field(
        default=None, description="Shell command that fails over from a dead dependency (run after approval).")
    failover_cwd: str | None = Field(default=None, description="Where it runs; the repository if empty.")
    dependency_wait_seconds: float = Field(
        default=60.0, description="Without a failover, how long to wait for a dependency to come back.")
    verify_budget_seconds: float = Field(default=30.0, description="How long VERIFY fix may ask again.")
    watch_seconds: float = Field(default=300.0, description="How long to monitor closely after the fix.")
    watch_interval_seconds: float = Field(default=10.0, gt=0, description="Between two rounds while watching.")
    probe_timeout_seconds: float = Field(default=5.0, gt=0, description="Longest one probe waits for an answer.")

    def status_page_headers(self) -> dict[str, str]:
        """The only place the status page token is unwrapped."""
        if self.status_page_token is None:
            return {}
        return {"Authorization": f"Bearer {self.status_page_token.get_secret_value()}"}

    def secret_values(self) -> list[str]:
        return [self.status_page_token.get_secret_value()] if self.status_page_token else []

    def spec(self, block_name: str | None = None) -> OutageSpec:
        fields = self.model_dump(mode="json", exclude={"status_page_token"})
        fields = {k: v for k, v in fields.items() if k in OutageSpec.model_fields}
        return OutageSpec(**fields, block=block_name or getattr(self, "_block_document_name", None) or self.service,
                          status_page_token=self.status_page_token is not None)

    @classmethod
    def for_service(cls, name: str) -> OutageProfile:
        """Load the profile named `name`, or say which exist."""
        return load_named(cls, name, what="sevflow Outage Profile block", known_as="profiles",
                          hint="Create one (Prefect UI, Blocks) with at least the service's name and a control URL, "
                          "or name another with profile=...")
