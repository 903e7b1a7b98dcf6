"""Prefect Block types: what sevflow acts on, who may approve, and the secrets to reach them."""

from sevflow.blocks.policy import ApprovalPolicy, ApprovalRule, EscalationTier
from sevflow.blocks.service import ServiceTarget

ALL_BLOCK_TYPES = (ServiceTarget, ApprovalPolicy)

__all__ = ["ALL_BLOCK_TYPES", "ApprovalPolicy", "ApprovalRule", "EscalationTier", "ServiceTarget"]
