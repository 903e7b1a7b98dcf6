"""Prefect Block types: what sevflow acts on, who may approve, and the secrets to reach them."""

from sevflow.blocks.alert_source import AlertSource
from sevflow.blocks.aws_account import AwsAccountTarget
from sevflow.blocks.database import DatabaseTarget
from sevflow.blocks.host import HostTarget
from sevflow.blocks.outage import OutageProfile
from sevflow.blocks.policy import ApprovalPolicy, ApprovalRule, EscalationTier
from sevflow.blocks.service import ServiceTarget

ALL_BLOCK_TYPES = (ServiceTarget, ApprovalPolicy, AlertSource, OutageProfile, HostTarget, AwsAccountTarget,
                   DatabaseTarget)

__all__ = ["ALL_BLOCK_TYPES", "AlertSource", "ApprovalPolicy", "ApprovalRule", "AwsAccountTarget", "DatabaseTarget",
           "EscalationTier", "HostTarget", "OutageProfile", "ServiceTarget"]
