"""First-start set-up on a Prefect server: block types, and a default approval policy."""

from __future__ import annotations

import getpass
import os

from prefect.logging import get_logger

from sevflow.blocks import ALL_BLOCK_TYPES, ApprovalPolicy, ApprovalRule

log = get_logger("sevflow.setup")


def ensure_defaults() -> None:
    """Register sevflow's block types (so they have forms in the UI's Blocks page) and,
    if none exists, an approval policy named `default`.

    The default lets the people named in SEVFLOW_APPROVERS (comma-separated; else the
    current user) approve any change, one approval each. Edit it in the UI before production.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect_aws import AwsCredentials  # the security-breach procedure's AWS keys

    for block_type in (*ALL_BLOCK_TYPES, CustomWebhookNotificationBlock, AwsCredentials):
        block_type.register_type_and_schema()
    try:
        ApprovalPolicy.load("default")
        return
    except ValueError:
        pass
    names = [n.strip() for n in os.environ.get("SEVFLOW_APPROVERS", "").split(",") if n.strip()]
    names = names or [getpass.getuser()]
    ApprovalPolicy(rules=[ApprovalRule(change_kind="*", approvers=names)]).save("default")
    log.warning("Created approval policy 'default': %s may approve any change. Edit it in the UI (Blocks).",
                ", ".join(names))
