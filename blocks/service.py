"""The service target block: one production service sevflow may act on."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from sevflow.blocks.common import block_names, load_named
from sevflow.errors import UnknownServiceError
from sevflow.models import ServiceSpec


class ServiceTarget(Block):
    """A production service: where its code lives, how it is built, deployed and reloaded,
    and how to tell it is healthy. Procedures load it by name (the `service` parameter).

    Secrets (`command_secrets`, `health_check_token`) are handed to commands as environment
    variables and to health checks as a bearer token; sevflow never logs them and masks them
    in any command output it records.
    """

    _block_type_name = "sevflow Service Target"
    _block_type_slug = "sevflow-service-target"
    _description = "A production service sevflow may roll back: repository, commands, health checks."

    service: str = Field(description="The service's name, as alerts and people call it.")
    repository: str = Field(
        description="Path of the service's git checkout on the machine that runs sevflow "
        "(the tree the build and deploy commands work in)."
    )
    branch: str = Field(default="main", description="The branch production runs from.")
    build_command: str | None = Field(
        default=None, description="Shell command run in the repository to build, e.g. `npm run build`."
    )
    deploy_command: str | None = Field(
        default=None, description="Shell command run in the repository to deploy, e.g. `npm start`."
    )
    reload_command: str | None = Field(
        default=None, description="Shell command that makes the service re-read its configuration."
    )
    health_check_urls: list[str] = Field(
        default_factory=list,
        description="URLs that answer 2xx when the service is healthy, e.g. http://localhost:3000/api/health.",
    )
    health_check_budget_seconds: float = Field(
        default=120.0, description="How long verification may retry the health checks."
    )
    config_files: list[str] = Field(
        default_factory=list,
        description="Configuration files (paths inside the repository) a configuration rollback may restore.",
    )
    good_tag_pattern: str = Field(
        default="good-*",
        description="Tags matching this glob mark a version known to be good (application rollback target).",
    )
    good_trailer: str = Field(
        default="Known-Good",
        description="A commit trailer with this key (value yes/true) also marks a known-good version.",
    )
    command_timeout_seconds: float = Field(default=900.0, description="Longest a build, deploy or reload may run.")
    approval_policy: str | None = Field(
        default=None,
        description="The sevflow Approval Policy block that judges this service's changes. Set, a run "
        "cannot pick another (weaker) policy with its `policy` parameter.",
    )
    command_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Environment variables for the commands whose values are secret (tokens, passwords).",
    )
    health_check_token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the health checks, if they need one."
    )

    @property
    def repository_path(self) -> Path:
        return Path(os.path.expanduser(self.repository))

    def command_environment(self) -> dict[str, str]:
        """The only place command secrets are unwrapped."""
        return {name: value.get_secret_value() for name, value in self.command_secrets.items()}

    def secret_values(self) -> list[str]:
        """Every secret this block holds, so output can be masked before it is recorded."""
        values = [v.get_secret_value() for v in self.command_secrets.values()]
        if self.health_check_token is not None:
            values.append(self.health_check_token.get_secret_value())
        return [v for v in values if v]

    def health_check_headers(self) -> dict[str, str]:
        """The only place the health-check token is unwrapped."""
        if self.health_check_token is None:
            return {}
        return {"Authorization": f"Bearer {self.health_check_token.get_secret_value()}"}

    def spec(self, block_name: str | None = None) -> ServiceSpec:
        """Every field but the secret values (their names only): what a plan is made from."""
        fields = self.model_dump(mode="json", exclude={"command_secrets", "health_check_token"})
        fields = {k: v for k, v in fields.items() if k in ServiceSpec.model_fields}
        return ServiceSpec(
            **fields,
            block=block_name or getattr(self, "_block_document_name", None) or self.service,
            secret_env=sorted(self.command_secrets),
            health_check_token=self.health_check_token is not None,
        )

    @classmethod
    def for_service(cls, name: str) -> ServiceTarget:
        """Load the target named `name`, or say which targets exist."""
        return load_named(cls, name, what="service target", known_as="services", error=UnknownServiceError)


def known_services() -> list[str]:
    """Names of the service target blocks on the server (no secrets read)."""
    return block_names(ServiceTarget)
