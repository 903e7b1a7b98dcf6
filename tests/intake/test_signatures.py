"""Sender authentication, pure: the published vectors verify, one changed byte does not."""

from __future__ import annotations

import json

import pytest

from sevflow.errors import AuthenticationFailed
from sevflow.intake.alerts import sns_envelope
from sevflow.intake.auth import SnsVerifier, SourceAuth, check_aws_url, check_headers_and_body
from tests.support.alerts import SnsSigner, fixture, sns_alarm, vectors

PD = vectors("pagerduty-v3-signature-vectors.json")
GF = vectors("grafana-hmac-vectors.GENERATED.json")


def changed(body: bytes) -> bytes:
    i = len(body) // 2
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]


def test_pagerduty_vector_verifies_and_a_changed_byte_fails() -> None:
    auth = SourceAuth("pagerduty", signing_secrets=(PD["secret"],))
    for vector in PD["vectors"]:
        body = fixture(vector["body_file"])
        headers = {"x-pagerduty-signature": vector["X-PagerDuty-Signature"]}
        check_headers_and_body(auth, headers, body)
        with pytest.raises(AuthenticationFailed, match="no v1 signature matches"):
            check_headers_and_body(auth, headers, changed(body))


def test_pagerduty_rotation_several_signatures_and_secrets() -> None:
    body = fixture("pagerduty-v3-incident-triggered.json")
    good = PD["vectors"][0]["X-PagerDuty-Signature"]
    # PagerDuty signs with old and new secret while rotating; we may hold either
    check_headers_and_body(SourceAuth("pagerduty", signing_secrets=(PD["secret"],)),
                           {"x-pagerduty-signature": f"v1=00ff, {good}"}, body)
    check_headers_and_body(SourceAuth("pagerduty", signing_secrets=("new-secret", PD["secret"])),
                           {"x-pagerduty-signature": good}, body)
    with pytest.raises(AuthenticationFailed, match="missing"):
        check_headers_and_body(SourceAuth("pagerduty", signing_secrets=(PD["secret"],)),
                               {"x-pagerduty-signature": good.replace("v1=", "v0=")}, body)


def test_grafana_vectors_with_and_without_timestamp_and_the_replay_window() -> None:
    body = fixture(GF["body_file"])
    plain = SourceAuth("grafana", signing_secrets=(GF["secret"],))
    sig = GF["without_timestamp"]["X-Grafana-Alerting-Signature"]
    check_headers_and_body(plain, {"x-grafana-alerting-signature": sig}, body)
    with pytest.raises(AuthenticationFailed):
        check_headers_and_body(plain, {"x-grafana-alerting-signature": sig}, changed(body))
    stamped = SourceAuth("grafana", signing_secrets=(GF["secret"],), timestamp_header="X-Grafana-Alerting-Timestamp",
                         replay_window_seconds=300)
    headers = {k.lower(): v for k, v in GF["with_timestamp"].items()}
    ts = int(GF["with_timestamp"]["X-Grafana-Alerting-Timestamp"])
    check_headers_and_body(stamped, headers, body, now=lambda: ts + 299)
    with pytest.raises(AuthenticationFailed, match="outside the replay window"):
        check_headers_and_body(stamped, headers, body, now=lambda: ts + 301)
    with pytest.raises(AuthenticationFailed, match="does not match"):
        check_headers_and_body(stamped, headers | {"x-grafana-alerting-timestamp": str(ts + 1)}, body,
                               now=lambda: ts)


def test_bearer() -> None:
    auth = SourceAuth("alertmanager", bearer_token="s3cret-token")
    check_headers_and_body(auth, {"authorization": "Bearer s3cret-token"}, b"{}")
    for value in ("", "Bearer", "Basic s3cret-token", "Bearer s3cret-tokeN"):
        with pytest.raises(AuthenticationFailed) as info:
            check_headers_and_body(auth, {"authorization": value}, b"{}")
        assert "s3cret" not in str(info.value)
    with pytest.raises(AuthenticationFailed, match="no token or signing secret"):
        check_headers_and_body(SourceAuth("datadog"), {}, b"{}")
    check_headers_and_body(SourceAuth("datadog", allow_unauthenticated=True), {}, b"{}")


@pytest.mark.parametrize("url", [
    "http://sns.eu-west-1.amazonaws.com/cert.pem",
    "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
    "https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem",
    "https://user@sns.eu-west-1.amazonaws.com/cert.pem",
    "https://sns.eu-west-1.amazonaws.com:8443/cert.pem",
    "https://s3.eu-west-1.amazonaws.com/cert.pem",
])
def test_sns_certificate_urls_that_are_refused(url: str) -> None:
    with pytest.raises(AuthenticationFailed, match="not an https URL on sns"):
        check_aws_url(SourceAuth("sns"), url, "SigningCertURL")


def test_sns_signature_both_versions_topics_and_tampering() -> None:
    signer = SnsSigner()
    url = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"
    fetched: list[str] = []
    verifier = SnsVerifier(fetch=lambda u: fetched.append(u) or signer.pem)
    topic = "arn:aws:sns:eu-west-1:123:alarms"
    auth = SourceAuth("sns", allowed_topics=("arn:aws:sns:eu-west-1:123:*",))
    for version in ("1", "2"):
        env = signer.sign(sns_alarm(topic, "api-errors", cert_url=url), version)
        verifier.verify(auth, sns_envelope(env))
        tampered = dict(env, Message=env["Message"].replace("ALARM", "OK"))
        with pytest.raises(AuthenticationFailed, match="does not verify"):
            verifier.verify(auth, sns_envelope(tampered))
    assert fetched == [url]  # fetched once, then kept
    with pytest.raises(AuthenticationFailed, match="not in allowed_topics"):
        verifier.verify(auth, sns_envelope(signer.sign(sns_alarm("arn:aws:sns:eu-west-1:999:x", "a", cert_url=url))))
    with pytest.raises(AuthenticationFailed, match="allows no SNS topic"):
        verifier.verify(SourceAuth("sns"), sns_envelope(signer.sign(sns_alarm(topic, "a", cert_url=url))))


def test_the_real_sns_fixture_is_refused_when_its_certificate_cannot_be_fetched() -> None:
    # Its RSA signature is AWS's; offline we cannot get AWS's certificate, so it must not pass.
    def offline(url: str) -> bytes:
        raise OSError("network unreachable")
    env = sns_envelope(json.loads(fixture("aws-sns-cloudwatch-alarm.json")))
    with pytest.raises(AuthenticationFailed, match="could not get the signing certificate"):
        SnsVerifier(fetch=offline).verify(SourceAuth("sns", allowed_topics=("*",)), env)
