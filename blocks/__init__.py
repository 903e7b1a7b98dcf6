"""Prefect Block types: what sevflow acts on, who may approve, and the secrets to reach them."""

from sevflow.blocks.alert_source import AlertSource
from sevflow.blocks.host import HostTarget
from sevflow.blocks.outage import OutageProfile
from sevflow.blocks.policy import ApprovalPolicy, ApprovalRule, EscalationTier
from sevflow.blocks.service import ServiceTarget

ALL_BLOCK_TYPES = (ServiceTarget, ApprovalPolicy, AlertSource, OutageProfile, HostTarget)

__all__ = ["ALL_BLOCK_TYPES", "AlertSource", "ApprovalPolicy", "ApprovalRule", "EscalationTier", "HostTarget",
           "OutageProfile", "ServiceTarget"]
