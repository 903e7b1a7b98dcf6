"""The service target block: one production service sevflow may act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from sevflow.blocks.common import block_names, load_named
from sevflow.errors import UnknownServiceError
from sevflow.models import ServiceSpec
from sevflow.versions import check_repository_address, is_remote_repository, remote_cache_path


class ServiceTarget(Block):
    """A production service: where its code lives, how it is built, deployed and reloaded,
    and how to tell it is healthy. Procedures load it by its block name (the `service`
    parameter), which is the service's name unless the optional `service` field says otherwise.

    Secrets (`command_secrets`, `health_check_token`) are handed to commands as environment
    variables and to health checks as a bearer token; sevflow never logs them and masks them
    in any command output it records.
    """

    _block_type_name = "sevflow Service Target"
    _block_type_slug = "sevflow-service-target"
    _description = "A production service sevflow may roll back: repository, commands, health checks."

    service: str | None = Field(
        default=None, title="Service name (if not the block's name)",
        description="Leave empty: the block's name is the service's name, as alerts and people call it "
        "and as procedures' `service` parameter names it. Set it only to show another name in plans.",
    )
    repository: str = Field(
        description="Path of the service's git checkout on the machine that runs sevflow (the tree the "
        "build and deploy commands work in), or the address of its repository (https://, ssh://, "
        "git@host:path, file://): each worker then fetches it into its own cache under sevflow's state "
        "folder, and pushes the rollback commit back (fast-forward only). No credential in the address: "
        "put it in `repository_credential`."
    )
    repository_username: str | None = Field(
        default=None, description="https repositories: the user name sent with `repository_credential` "
        "(for a token, whatever the host expects, e.g. `x-access-token` or `oauth2`)."
    )
    repository_credential: SecretStr | None = Field(
        default=None, description="Reaching a remote repository: for https, the password or access token; "
        "for ssh, the private key (OpenSSH format)."
    )
    branch: str = Field(default="main", description="The branch production runs from.")
    build_command: str | None = Field(
        default=None, description="Shell command run in the repository to build, e.g. `npm run build`. "
        "Optional: when set, Rollback: Application and Production System Down run it before deploying."
    )
    deploy_command: str | None = Field(
        default=None, description="Shell command run in the repository to deploy, e.g. `npm start`. "
        "Needed by: Rollback: Application, Production System Down's rollback and hotfix."
    )
    reload_command: str | None = Field(
        default=None, description="Shell command that makes the service re-read its configuration. "
        "Needed by: Rollback: Configuration."
    )
    health_check_urls: list[Annotated[str, Field(pattern=r"^https?://\S+$")]] = Field(
        default_factory=list,
        description="URLs (http:// or https://) that answer 2xx when the service is healthy, e.g. "
        "http://localhost:3000/api/health. Needed by every procedure that changes the service: "
        "Rollback: Application, Rollback: Configuration, Production System Down.",
    )
    health_check_budget_seconds: float = Field(
        default=120.0, gt=0, description="How long verification may retry the health checks."
    )
    config_files: list[str] = Field(
        default_factory=list,
        description="Configuration files (paths relative to the repository root) a configuration rollback "
        "may restore. Needed by: Rollback: Configuration.",
    )
    good_tag_pattern: str = Field(
        default="good-*",
        description="Tags matching this glob mark a version known to be good (application rollback target).",
    )
    good_trailer: str = Field(
        default="Known-Good",
        description="A commit trailer with this key (value yes/true) also marks a known-good version.",
    )
    command_timeout_seconds: float = Field(default=900.0, gt=0,
                                           description="Longest a build, deploy or reload may run.")
    build_disk_space_mb: int = Field(
        default=256, ge=0, description="Free space (MB) a build needs on the checkout's filesystem; checked "
        "before approval is asked."
    )
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

    @field_validator("repository")
    @classmethod
    def _address_without_secret(cls, value: str) -> str:
        return check_repository_address(value)

    @field_validator("config_files")
    @classmethod
    def _inside_the_repository(cls, paths: list[str]) -> list[str]:
        outside = [p for p in paths if not p.strip() or p.startswith("/") or ".." in Path(p).parts]
        if outside:
            raise ValueError(f"config_files must be paths relative to the repository root, inside it: {outside}")
        return paths

    @property
    def service_name(self) -> str:
        """The service's name: `service` when set, else the block's name."""
        return self.service or getattr(self, "_block_document_name", None) or ""

    @property
    def repository_path(self) -> Path:
        if is_remote_repository(self.repository):
            return remote_cache_path(self.repository)
        return Path(os.path.expanduser(self.repository))

    def repository_secret(self) -> tuple[str | None, str | None]:
        """(user name, credential): the only place the repository credential is unwrapped."""
        secret = self.repository_credential.get_secret_value() if self.repository_credential else None
        return self.repository_username, secret or None

    def command_environment(self) -> dict[str, str]:
        """The only place command secrets are unwrapped."""
        return {name: value.get_secret_value() for name, value in self.command_secrets.items()}

    def secret_values(self) -> list[str]:
        """Every secret this block holds, so output can be masked before it is recorded."""
        values = [v.get_secret_value() for v in self.command_secrets.values()]
        if self.health_check_token is not None:
            values.append(self.health_check_token.get_secret_value())
        if self.repository_credential is not None:
            values.append(self.repository_credential.get_secret_value())
        return [v for v in values if v]

    def health_check_headers(self) -> dict[str, str]:
        """The only place the health-check token is unwrapped."""
        if self.health_check_token is None:
            return {}
        return {"Authorization": f"Bearer {self.health_check_token.get_secret_value()}"}

    def spec(self, block_name: str | None = None) -> ServiceSpec:
        """Every field but the secret values (their names only): what a plan is made from."""
        fields = self.model_dump(mode="json", exclude={"command_secrets", "health_check_token",
                                                        "repository_credential"})
        fields = {k: v for k, v in fields.items() if k in ServiceSpec.model_fields and k != "service"}
        block = block_name or getattr(self, "_block_document_name", None) or self.service
        if not block:
            raise ValueError("A service target needs a name: save it as a block (its name is the service's), "
                         "or set `service`.")
        return ServiceSpec(
            **fields,
            service=self.service or block,
            block=block,
            secret_env=sorted(self.command_secrets),
            health_check_token=self.health_check_token is not None,
            repository_credential=self.repository_credential is not None,
        )

    @classmethod
    def for_service(cls, name: str) -> ServiceTarget:
        """Load the target named `name`, or say which targets exist."""
        return load_named(cls, name, what="service target", known_as="services", error=UnknownServiceError)


def known_services() -> list[str]:
    """Names of the service target blocks on the server (no secrets read)."""
    return block_names(ServiceTarget)
