"""Prefect Block types: what sevflow acts on, who may approve, and the secrets to reach them."""

from sevflow.blocks.alert_source import AlertSource
from sevflow.blocks.database import DatabaseTarget
from sevflow.blocks.policy import ApprovalPolicy, ApprovalRule, EscalationTier
from sevflow.blocks.service import ServiceTarget

ALL_BLOCK_TYPES = (ServiceTarget, ApprovalPolicy, AlertSource, DatabaseTarget)

__all__ = ["ALL_BLOCK_TYPES", "AlertSource", "ApprovalPolicy", "DatabaseTarget", "ApprovalRule", "EscalationTier", "ServiceTarget"]
