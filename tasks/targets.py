"""The service target block as Prefect stores it: read once per plan, checked before acting.

A plan is made from one reading of the block (its fields, the names of its secrets). Before
a command runs, the block is read again and compared: an edit made while a gate waited
(another deploy command, another repository, another file) stops the change.
"""

from __future__ import annotations

from sevflow.blocks.database import DatabaseTarget
from sevflow.blocks.host import HostTarget
from sevflow.blocks.service import ServiceTarget
from sevflow.models import DatabaseSpec, HostSpec, OutageSpec, ServiceSpec
from sevflow.tasks.common import step


@step("read the service target", timeline=False)
def read_service_target(service: str, reading: str = "") -> ServiceSpec:
    """The block `service` as it is now, without secret values. Persisted per run and
    reading (the kit passes the gate's name), so every replay of the run plans from the same
    reading, and a plan made again after drift reads afresh. Changes nothing."""
    return ServiceTarget.for_service(service).spec(service).model_copy(update={"reading": reading})


@step("read the host target", timeline=False)
def read_host_target(host: str, reading: str = "") -> HostSpec:
    """The host block `host` as it is now; persisted per run and reading, like
    `read_service_target`. Changes nothing."""
    return HostTarget.for_host(host).spec(host).model_copy(update={"reading": reading})


def host_target_changes(planned: HostSpec) -> list[str]:
    """What moved in the host block since `planned` was read (empty when unchanged)."""
    try:
        live = HostTarget.load(planned.block)
    except ValueError:
        return [f"the host target block {planned.block!r} was deleted"]
    return live.spec(planned.block).changes_since(planned)  # type: ignore[attr-defined]


def target_changes(planned: ServiceSpec) -> list[str]:
    """What moved in the block since `planned` was read: one sentence per field, or a
    sentence saying the block is gone; empty when it is unchanged."""
    try:
        live = ServiceTarget.load(planned.block)
    except RuntimeError:  # Prefect's "failed validation": edited into something the block refuses
        return [f"the service target block {planned.block!r} was edited and is no longer valid"]
    except ValueError:
        return [f"the service target block {planned.block!r} was deleted"]
    return live.spec(planned.block).changes_since(planned)  # type: ignore[attr-defined]


def load_secrets(block: str, names: list[str]) -> tuple[dict[str, str], list[str]]:
    """(environment for a command: only the `names` it was approved with; every secret value
    of the block, to mask output). The block's own methods are where values are unwrapped."""
    target = ServiceTarget.for_service(block)
    env = target.command_environment()
    return {name: env[name] for name in names if name in env}, target.secret_values()


@step("read the outage profile", timeline=False)
def read_outage_profile(name: str, reading: str = "") -> OutageSpec:
    """The outage profile block `name` as it is now, without secret values. Persisted per run
    and reading, like the service target. Changes nothing."""
    from sevflow.blocks.outage import OutageProfile

    return OutageProfile.for_service(name).spec(name).model_copy(update={"reading": reading})


def profile_changes(planned: OutageSpec) -> list[str]:
    """What moved in the outage profile since `planned` was read; empty when unchanged."""
    from sevflow.blocks.outage import OutageProfile

    try:
        live = OutageProfile.load(planned.block)
    except ValueError:
        return [f"the outage profile block {planned.block!r} was deleted"]
    return live.spec(planned.block).changes_since(planned)  # type: ignore[attr-defined]


@step("read the database target", timeline=False)
def read_database_target(name: str, reading: str = "") -> DatabaseSpec:
    """The block `name` as it is now, without the DSN's secret; persisted per run and reading."""
    return DatabaseTarget.for_name(name).spec(name).model_copy(update={"reading": reading})


def database_target_changes(planned: DatabaseSpec) -> list[str]:
    """What moved in the database target block since `planned` was read (or that it is gone)."""
    try:
        live = DatabaseTarget.load(planned.block)
    except ValueError:
        return [f"the database target block {planned.block!r} was deleted"]
    return live.spec(planned.block).changes_since(planned)  # type: ignore[attr-defined]
