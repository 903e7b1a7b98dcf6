"""The AWS account target block: one AWS account (and region) sevflow may contain a breach in."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from sevflow.blocks.common import load_named
from sevflow.errors import UnknownServiceError
from sevflow.models import AwsAccess, AwsAccountSpec, WafIpSetRef


class AwsAccountTarget(Block):
    """An AWS account sevflow may act on during a security breach: where to reach it (a
    prefect-aws `AwsCredentials` block, named here; the keys live only there), where evidence
    goes (an S3 bucket with Object Lock), what blocks traffic (a network ACL, optionally a WAFv2
    IP set), the security group that isolates a host, and the patch command.

    Procedures load it by name (the `account` parameter of `security-breach`).
    """

    _block_type_name = "sevflow AWS Account Target"
    _block_type_slug = "sevflow-aws-account-target"
    _description = "An AWS account the security-breach procedure may contain, preserve evidence in, and remediate."

    account: str = Field(description="The account's name as people call it (e.g. `prod`).")
    region: str = Field(description="The AWS region the procedure works in, e.g. eu-west-1.")
    credentials_block: str = Field(
        description="Name of the prefect-aws `AwsCredentials` block whose keys sevflow uses (needs IAM, EC2, "
        "S3, CloudWatch Logs, STS, and CloudTrail lookups and WAFv2 where used)."
    )
    evidence_bucket: str = Field(
        description="S3 bucket for evidence. It must have Object Lock enabled: every object sevflow writes is "
        "locked in compliance mode, so nobody (root included) can delete or overwrite it before the retention ends."
    )
    evidence_retention_days: int = Field(default=365, ge=1, description="How long evidence stays locked.")
    network_acl_id: str | None = Field(default=None, description="Network ACL that gets deny entries for suspicious IPs.")
    deny_rule_base: int = Field(
        default=10, ge=1, le=32766,
        description="Lowest rule number for deny entries (below your allow rules, so the deny wins).",
    )
    waf_ip_set_name: str | None = Field(default=None, description="WAFv2 IP set that blocks suspicious IPs (optional).")
    waf_ip_set_id: str | None = Field(default=None, description="Its id.")
    waf_scope: str = Field(default="REGIONAL", description="REGIONAL or CLOUDFRONT.")
    isolation_group_id: str | None = Field(
        default=None,
        description="Security group with no inbound and no outbound rule: an isolated host's interfaces get only this.",
    )
    patch_command: str | None = Field(default=None, description="Shell command that patches the vulnerability.")
    patch_cwd: str = Field(default=".", description="Folder the patch command runs in.")
    patch_timeout_seconds: float = Field(default=900.0, description="Longest the patch command may run.")
    log_groups: list[str] = Field(
        default_factory=list, description="CloudWatch log groups exported to the evidence bucket."
    )
    notify: list[str] = Field(
        default_factory=list,
        description="Notification blocks told at once (`block-type-slug/name`, e.g. `custom-webhook/security`).",
    )
    approval_policy: str | None = Field(
        default=None, description="The sevflow Approval Policy block that judges this account's changes."
    )
    connect_timeout_seconds: float = Field(default=5.0, description="AWS API connect timeout.")
    read_timeout_seconds: float = Field(default=30.0, description="AWS API read timeout.")

    def spec(self, block_name: str | None = None) -> AwsAccountSpec:
        ip_set = None
        if self.waf_ip_set_name and self.waf_ip_set_id:
            ip_set = WafIpSetRef(name=self.waf_ip_set_name, id=self.waf_ip_set_id, scope=self.waf_scope)  # type: ignore[arg-type]
        return AwsAccountSpec(
            block=block_name or getattr(self, "_block_document_name", None) or self.account,
            account=self.account,
            access=AwsAccess(credentials_block=self.credentials_block, region=self.region,
                             connect_timeout_seconds=self.connect_timeout_seconds,
                             read_timeout_seconds=self.read_timeout_seconds),
            evidence_bucket=self.evidence_bucket, evidence_retention_days=self.evidence_retention_days,
            network_acl_id=self.network_acl_id, deny_rule_base=self.deny_rule_base, waf_ip_set=ip_set,
            isolation_group_id=self.isolation_group_id, patch_command=self.patch_command, patch_cwd=self.patch_cwd,
            patch_timeout_seconds=self.patch_timeout_seconds, log_groups=list(self.log_groups),
            notify=list(self.notify), approval_policy=self.approval_policy,
        )

    @classmethod
    def for_account(cls, name: str) -> AwsAccountTarget:
        """Load the target named `name`, or say which exist."""
        return load_named(cls, name, what="AWS account target", known_as="accounts", error=UnknownServiceError)
