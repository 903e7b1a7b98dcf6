"""Is this delivery from the sender it claims to be? Checked before the body is read as an alert.

Each check raises `AuthenticationFailed` with a message the sender's operator can act on
(which header, which block) and never the secret or the expected value.

- bearer token (every source): `Authorization: Bearer <token>`;
- PagerDuty: `X-PagerDuty-Signature: v1=<hex HMAC-SHA256(secret, body)>`, several
  comma-separated values while a secret rotates (accept if any matches any secret we hold);
- Grafana: hex HMAC-SHA256 over the body, or over `"<ts>:<body>"` when a timestamp header is
  configured, with the timestamp inside a replay window;
- SNS: RSA signature (SHA1 for SignatureVersion 1, SHA256 for 2) over the canonical fields,
  with the certificate from `SigningCertURL`, which must be an https URL on
  `sns.<region>.amazonaws.com` (or an origin the block trusts explicitly).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

from sevflow.errors import AuthenticationFailed
from sevflow.intake.alerts import SnsEnvelope


@dataclass(frozen=True)
class SourceAuth:
    """What one source must present; built from its `sevflow Alert Source` block."""

    source: str
    bearer_token: str | None = None
    signing_secrets: tuple[str, ...] = ()
    signature_header: str | None = None
    timestamp_header: str | None = None
    replay_window_seconds: float = 300.0
    allowed_topics: tuple[str, ...] = ()
    trusted_origins: tuple[str, ...] = ()
    allow_unauthenticated: bool = False
    block: str = ""

    def __repr__(self) -> str:  # never show secrets
        return f"SourceAuth({self.source!r}, bearer={'set' if self.bearer_token else 'unset'}, " \
               f"signing_secrets={len(self.signing_secrets)})"

    @property
    def has_check(self) -> bool:
        return bool(self.bearer_token or self.signing_secrets or self.source == "sns")


def check_headers_and_body(auth: SourceAuth, headers: Mapping[str, str], body: bytes,
                           now: Callable[[], float] = time.time) -> None:
    """Every configured check for a non-SNS source (SNS is checked on its envelope)."""
    if not auth.has_check and not auth.allow_unauthenticated:
        raise AuthenticationFailed(
            f"source {auth.source!r} has no token or signing secret in block {auth.block}; "
            "set one (or allow_unauthenticated, on a trusted network only)")
    if auth.bearer_token:
        check_bearer(auth, headers)
    if auth.signing_secrets and auth.source == "pagerduty":
        check_pagerduty_signature(auth, headers, body)
    elif auth.signing_secrets and auth.source == "grafana":
        check_grafana_signature(auth, headers, body, now())
    elif auth.signing_secrets and auth.source != "sns":
        check_hex_hmac(auth, headers, body)


def check_bearer(auth: SourceAuth, headers: Mapping[str, str]) -> None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(f"missing `Authorization: Bearer <token>` (the token in block {auth.block})")
    assert auth.bearer_token is not None
    if not hmac.compare_digest(token.strip().encode(), auth.bearer_token.encode()):
        raise AuthenticationFailed(f"the bearer token is not the one in block {auth.block}")


def _hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _any_matches(candidates: list[str], secrets: tuple[str, ...], message: bytes) -> bool:
    expected = [_hex_hmac(s, message) for s in secrets]
    # compare every pair, so timing says nothing about which one matched
    hits = [hmac.compare_digest(c.lower().encode(), e.encode()) for c in candidates for e in expected]
    return any(hits)


def check_pagerduty_signature(auth: SourceAuth, headers: Mapping[str, str], body: bytes) -> None:
    header = (auth.signature_header or "X-PagerDuty-Signature").lower()
    value = headers.get(header, "")
    candidates = [v.strip()[3:] for v in value.split(",") if v.strip().startswith("v1=")]
    if not candidates:
        raise AuthenticationFailed(f"missing {auth.signature_header or 'X-PagerDuty-Signature'}: v1=<signature>")
    if not _any_matches(candidates, auth.signing_secrets, body):
        raise AuthenticationFailed(
            f"no v1 signature matches the signing secrets in block {auth.block} (was the body changed "
            "by a proxy, or the secret rotated in PagerDuty only?)")


def check_grafana_signature(auth: SourceAuth, headers: Mapping[str, str], body: bytes, now: float) -> None:
    header = auth.signature_header or "X-Grafana-Alerting-Signature"
    signature = headers.get(header.lower(), "").strip()
    if not signature:
        raise AuthenticationFailed(f"missing {header} (HMAC signing is set in block {auth.block})")
    message = body
    if auth.timestamp_header:
        stamp = headers.get(auth.timestamp_header.lower(), "").strip()
        if not stamp.isdigit():
            raise AuthenticationFailed(f"missing or non-numeric {auth.timestamp_header} (unix seconds)")
        if abs(now - int(stamp)) > auth.replay_window_seconds:
            raise AuthenticationFailed(
                f"{auth.timestamp_header} is {int(now - int(stamp))} s from now, outside the replay window of "
                f"{auth.replay_window_seconds:.0f} s: a replay, or the sender's clock is wrong")
        message = stamp.encode() + b":" + body
    if not _any_matches([signature], auth.signing_secrets, message):
        raise AuthenticationFailed(f"{header} does not match the signing secrets in block {auth.block}")


def check_hex_hmac(auth: SourceAuth, headers: Mapping[str, str], body: bytes) -> None:
    """Other sources behind a signing proxy: hex HMAC-SHA256 of the body in a named header."""
    header = auth.signature_header or "X-Sevflow-Signature"
    value = headers.get(header.lower(), "").strip().removeprefix("sha256=")
    if not value or not _any_matches([value], auth.signing_secrets, body):
        raise AuthenticationFailed(f"{header} is missing or does not match the secrets in block {auth.block}")


# --- SNS -------------------------------------------------------------------------------

_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


def check_aws_url(auth: SourceAuth, url: str, what: str) -> None:
    """An AWS URL we are about to fetch: https on sns.<region>.amazonaws.com, or a trusted origin."""
    if any(url.startswith(origin.rstrip("/") + "/") for origin in auth.trusted_origins):
        return
    parts = urlsplit(url)
    if parts.scheme != "https" or not _SNS_HOST.match(parts.hostname or "") or parts.port not in (None, 443) \
            or parts.username or parts.password:
        raise AuthenticationFailed(f"{what} {url!r} is not an https URL on sns.<region>.amazonaws.com; refused")


def sns_string_to_sign(envelope: SnsEnvelope) -> bytes:
    values = envelope.model_dump()
    lines = []
    for name in _SIGNED_FIELDS[envelope.Type]:
        if values.get(name) is None:
            continue  # Subject is signed only when present
        lines += [name, str(values[name])]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class SnsVerifier:
    """Checks SNS signatures; certificates are fetched once per URL (`fetch`, an https GET)
    and kept in `cache_dir` so a restart does not fetch them again."""

    fetch: Callable[[str], bytes]
    cache_dir: Path | None = None
    _certs: dict[str, bytes] = field(default_factory=dict)

    def certificate(self, url: str) -> bytes:
        if url in self._certs:
            return self._certs[url]
        cached = self.cache_dir / (hashlib.sha256(url.encode()).hexdigest() + ".pem") if self.cache_dir else None
        if cached is not None and cached.exists():
            pem = cached.read_bytes()
        else:
            pem = self.fetch(url)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_bytes(pem)
        self._certs[url] = pem
        return pem

    def verify(self, auth: SourceAuth, envelope: SnsEnvelope) -> None:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        if auth.allowed_topics and not any(_topic_matches(envelope.TopicArn, t) for t in auth.allowed_topics):
            raise AuthenticationFailed(f"topic {envelope.TopicArn} is not in allowed_topics of block {auth.block}")
        if not auth.allowed_topics:
            raise AuthenticationFailed(f"block {auth.block} allows no SNS topic; add the topic ARN to allowed_topics")
        check_aws_url(auth, envelope.SigningCertURL, "SigningCertURL")
        digest = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(envelope.SignatureVersion)
        if digest is None:
            raise AuthenticationFailed(f"unknown SNS SignatureVersion {envelope.SignatureVersion!r}")
        try:
            signature = base64.b64decode(envelope.Signature, validate=True)
        except ValueError as exc:
            raise AuthenticationFailed("the SNS Signature is not base64") from exc
        try:
            pem = self.certificate(envelope.SigningCertURL)
            key = x509.load_pem_x509_certificate(pem).public_key()
        except AuthenticationFailed:
            raise
        except Exception as exc:  # network, TLS or a PEM that is not a certificate: all mean "cannot verify"
            raise AuthenticationFailed(
                f"could not get the signing certificate {envelope.SigningCertURL}: {type(exc).__name__}") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise AuthenticationFailed("the SNS signing certificate does not hold an RSA key")
        try:
            key.verify(signature, sns_string_to_sign(envelope), padding.PKCS1v15(), digest)
        except InvalidSignature as exc:
            raise AuthenticationFailed("the SNS message signature does not verify") from exc


def _topic_matches(arn: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(arn, pattern)
