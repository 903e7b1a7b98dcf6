"""Is this delivery from the sender it claims to be? Checked before the body is read as an alert.

Each check raises `AuthenticationFailed` with a message the sender's operator can act on
(which header, which block) and never the secret or the expected value.

- bearer token or basic credentials (every source): `Authorization: Bearer <token>` or
  `Authorization: Basic <base64 user:password>` (Alertmanager's and Grafana's `basic_auth`);
- PagerDuty: `X-PagerDuty-Signature: v1=<hex HMAC-SHA256(secret, body)>`, several
  comma-separated values while a secret rotates (accept if any matches any secret we hold);
- Grafana: hex HMAC-SHA256 over the body, or over `"<ts>:<body>"` when a timestamp header is
  configured, with the timestamp inside a replay window;
- SNS: RSA signature (SHA1 for SignatureVersion 1, SHA256 for 2) over the canonical fields,
  with the certificate from `SigningCertURL`, which must be an https URL of a `.pem` file on
  `sns.<region>.amazonaws.com` (or an origin the block trusts explicitly). A certificate that
  cannot be fetched is `TemporarilyUnavailable` (503: SNS retries), not a refusal.
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

from sevflow.errors import AuthenticationFailed, TemporarilyUnavailable
from sevflow.intake.alerts import SnsEnvelope, SourceAuth, check_topic_patterns  # noqa: F401 (re-exported)


def check_headers_and_body(auth: SourceAuth, headers: Mapping[str, str], body: bytes,
                           now: Callable[[], float] = time.time) -> None:
    """Every configured check for a non-SNS source (SNS is checked on its envelope)."""
    if not auth.has_check and not auth.allow_unauthenticated:
        raise AuthenticationFailed(
            f"source {auth.source!r} has no token or signing secret in block {auth.block}; "
            "set one (or allow_unauthenticated, on a trusted network only)")
    if auth.bearer_token or auth.basic_password:
        check_authorization(auth, headers)
    if auth.signing_secrets and auth.source == "pagerduty":
        check_pagerduty_signature(auth, headers, body)
    elif auth.signing_secrets and auth.source == "grafana":
        check_grafana_signature(auth, headers, body, now())
    elif auth.signing_secrets and auth.source != "sns":
        check_hex_hmac(auth, headers, body)


def check_authorization(auth: SourceAuth, headers: Mapping[str, str]) -> None:
    """The Authorization header carries the block's bearer token or its basic credentials
    (whichever the block sets; either one when it sets both)."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    scheme, token = scheme.lower(), token.strip()
    wanted = " or ".join(w for w, on in (("`Authorization: Bearer <token>`", auth.bearer_token),
                                         ("basic auth", auth.basic_password)) if on)
    if scheme == "bearer" and token and auth.bearer_token:
        if not hmac.compare_digest(token.encode(), auth.bearer_token.encode()):
            raise AuthenticationFailed(f"the bearer token is not the one in block {auth.block}")
        return
    if scheme == "basic" and token and auth.basic_password:
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except ValueError:
            raise AuthenticationFailed("the basic auth credentials are not base64 of user:password") from None
        # compare both, always, so timing says nothing about which one was wrong
        same_user = hmac.compare_digest(user.encode(), (auth.basic_username or "").encode())
        same_password = hmac.compare_digest(password.encode(), auth.basic_password.encode())
        if not (sep and same_user and same_password):
            raise AuthenticationFailed(f"the basic auth user or password is not the one in block {auth.block}")
        return
    raise AuthenticationFailed(f"missing {wanted} (the credentials in block {auth.block})")


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
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise AuthenticationFailed(f"missing or malformed {auth.timestamp_header}: unix seconds, digits only")
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

# sns.<region>.amazonaws.com[.cn], where a region is like us-east-1, eu-central-2, us-gov-west-1,
# cn-north-1, us-iso-east-1: never an S3 bucket host such as sns.s3.amazonaws.com.
_SNS_HOST = re.compile(r"^sns\.[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]\.amazonaws\.com(\.cn)?$")
# A topic pattern names one account's topics: partition, region and account are literal.
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


def check_signing_cert_url(auth: SourceAuth, url: str) -> None:
    check_aws_url(auth, url, "SigningCertURL")
    if not urlsplit(url).path.endswith(".pem"):
        raise AuthenticationFailed(f"SigningCertURL {url!r} is not a .pem certificate; refused")


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

    def forget(self, url: str) -> None:
        self._certs.pop(url, None)
        if self.cache_dir is not None:
            (self.cache_dir / (hashlib.sha256(url.encode()).hexdigest() + ".pem")).unlink(missing_ok=True)

    def verify(self, auth: SourceAuth, envelope: SnsEnvelope) -> None:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        if not auth.allowed_topics:
            raise AuthenticationFailed(f"block {auth.block} allows no SNS topic; add the topic ARN to allowed_topics")
        check_topic_patterns(auth.allowed_topics, auth.block)
        if not any(_topic_matches(envelope.TopicArn, t) for t in auth.allowed_topics):
            raise AuthenticationFailed(f"topic {envelope.TopicArn} is not in allowed_topics of block {auth.block}")
        check_signing_cert_url(auth, envelope.SigningCertURL)
        digest = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(envelope.SignatureVersion)
        if digest is None:
            raise AuthenticationFailed(f"unknown SNS SignatureVersion {envelope.SignatureVersion!r}")
        try:
            signature = base64.b64decode(envelope.Signature, validate=True)
        except ValueError as exc:
            raise AuthenticationFailed("the SNS Signature is not base64") from exc
        try:
            pem = self.certificate(envelope.SigningCertURL)
        except Exception as exc:  # network, TLS, AWS answering an error: SNS retries on 5xx, never on 4xx
            raise TemporarilyUnavailable(
                f"could not fetch the signing certificate {envelope.SigningCertURL} ({type(exc).__name__}); "
                "retry", retry_after=30) from exc
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError as exc:
            self.forget(envelope.SigningCertURL)  # fetched something else; fetch it again next time
            raise TemporarilyUnavailable(
                f"the signing certificate at {envelope.SigningCertURL} is not a PEM certificate; retry",
                retry_after=30) from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise AuthenticationFailed("the SNS signing certificate does not hold an RSA key")
        try:
            key.verify(signature, sns_string_to_sign(envelope), padding.PKCS1v15(), digest)
        except InvalidSignature as exc:
            raise AuthenticationFailed("the SNS message signature does not verify") from exc


def _topic_matches(arn: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(arn, pattern)
