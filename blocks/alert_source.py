"""The alert source block: how one alerting system proves it is itself to the intake."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

if TYPE_CHECKING:
    from sevflow.intake.alerts import SourceAuth


class AlertSource(Block):
    """Credentials and checks for one alert sender. The intake loads the block named after
    the source (`alertmanager`, `grafana`, `pagerduty`, `datadog`, `opsgenie`, `sns`,
    `generic`); a source without a block is refused (401). Every check set here must pass.
    """

    _block_type_name = "sevflow Alert Source"
    _block_type_slug = "sevflow-alert-source"
    _description = "How one alerting system authenticates to the sevflow intake (token, HMAC secret, SNS topics)."

    bearer_token: SecretStr | None = Field(
        default=None, description="Sent by the sender as `Authorization: Bearer <token>`.")
    basic_auth_username: str | None = Field(
        default=None, description="With the password: the sender's `basic_auth` (Alertmanager, Grafana).")
    basic_auth_password: SecretStr | None = Field(
        default=None, description="The sender's basic auth password; either these or the bearer token may be sent.")
    signing_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 secret (PagerDuty webhook signing secret, Grafana HMAC secret).")
    previous_signing_secret: SecretStr | None = Field(
        default=None, description="The secret being rotated out; accepted too until you clear it.")
    signature_header: str | None = Field(
        default=None, description="Header with the signature (defaults: X-PagerDuty-Signature, "
        "X-Grafana-Alerting-Signature, X-Sevflow-Signature for other sources).")
    timestamp_header: str | None = Field(
        default=None, description="Grafana: the timestamp header you configured; then the signature covers "
        "'<ts>:<body>' and old timestamps are refused.")
    replay_window_seconds: float = Field(default=300, description="How old a signed timestamp may be.")
    allowed_topics: list[str] = Field(
        default_factory=list, description="SNS: topic ARNs (globs allowed) whose messages and subscription "
        "confirmations are accepted.")
    trusted_origins: list[str] = Field(
        default_factory=list, description="SNS: extra origins (e.g. a VPC endpoint) trusted for SigningCertURL "
        "and SubscribeURL besides https://sns.<region>.amazonaws.com.")
    allow_unauthenticated: bool = Field(
        default=False, description="Accept deliveries with no check at all. Only on a network you trust.")
    rate_limit: float = Field(
        default=50.0, gt=0, description="Alerts per second this source may deliver, on average; bursts of 20 s "
        "worth are absorbed. Beyond it the sender gets 429 with Retry-After (every sender retries those).")

    @field_validator("allowed_topics")
    @classmethod
    def _no_wildcard_topics(cls, v: list[str]) -> list[str]:
        from sevflow.errors import AuthenticationFailed
        from sevflow.intake.alerts import check_topic_patterns

        try:
            check_topic_patterns(v, "sevflow-alert-source/sns")
        except AuthenticationFailed as exc:
            raise ValueError(str(exc)) from None
        return v

    def get_auth(self, source: str, block: str) -> SourceAuth:
        """The checks for this source, with the secrets unwrapped: the only place they are."""
        from sevflow.intake.alerts import SourceAuth

        secrets = tuple(s.get_secret_value() for s in (self.signing_secret, self.previous_signing_secret)
                        if s is not None and s.get_secret_value())
        return SourceAuth(
            source=source,
            bearer_token=self.bearer_token.get_secret_value() if self.bearer_token else None,
            basic_username=self.basic_auth_username,
            basic_password=self.basic_auth_password.get_secret_value() if self.basic_auth_password else None,
            signing_secrets=secrets,
            signature_header=self.signature_header,
            timestamp_header=self.timestamp_header,
            replay_window_seconds=self.replay_window_seconds,
            allowed_topics=tuple(self.allowed_topics),
            trusted_origins=tuple(self.trusted_origins),
            allow_unauthenticated=self.allow_unauthenticated,
            rate_limit=self.rate_limit,
            block=block,
        )
