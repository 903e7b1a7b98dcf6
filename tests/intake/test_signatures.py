"""Sender authentication, pure: the published vectors verify, one changed byte does not."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from sevflow.errors import AuthenticationFailed, TemporarilyUnavailable
from sevflow.intake.alerts import sns_envelope
from sevflow.intake.auth import (
    SnsVerifier,
    SourceAuth,
    check_aws_url,
    check_headers_and_body,
    check_signing_cert_url,
    check_topic_patterns,
)
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
    topic = "arn:aws:sns:eu-west-1:123456789012:alarms"
    auth = SourceAuth("sns", allowed_topics=("arn:aws:sns:eu-west-1:123456789012:*",))
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


OUR_FIXTURES = Path(__file__).parent / "fixtures"
AWS_CERT_URL = "https://sns.{region}.amazonaws.com/SimpleNotificationService-6aad65c2f9911b05cd53efda11f913f9.pem"


def pinned_aws_certificate(url: str) -> bytes:
    """AWS's real SNS signing certificate for that URL in 2019, stored in the tests (offline)."""
    assert url.endswith("SimpleNotificationService-6aad65c2f9911b05cd53efda11f913f9.pem"), url
    return (OUR_FIXTURES / "sns-signing-cert-6aad65c2f9911b05cd53efda11f913f9.pem").read_bytes()


def test_a_real_aws_signed_message_verifies_against_aws_certificate_offline() -> None:
    env = sns_envelope(json.loads((OUR_FIXTURES / "aws-sns-signed-2019-11.json").read_bytes()))
    verifier = SnsVerifier(fetch=pinned_aws_certificate)
    verifier.verify(SourceAuth("sns", allowed_topics=("arn:aws:sns:us-east-1:041977924901:test",)), env)
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        verifier.verify(SourceAuth("sns", allowed_topics=("arn:aws:sns:us-east-1:041977924901:test",)),
                        env.model_copy(update={"Message": "this is a tesT"}))


def test_the_shared_cloudwatch_fixture_does_not_verify_against_aws_certificate() -> None:
    """The shared fixture names the same certificate, and a date inside its validity, but was
    edited after AWS signed it (its account id has ten digits): AWS's certificate refuses it."""
    env = sns_envelope(json.loads(fixture("aws-sns-cloudwatch-alarm.json")))
    assert env.SigningCertURL == AWS_CERT_URL.format(region="eu-west-1")
    auth = SourceAuth("sns", allowed_topics=("arn:aws:sns:eu-west-1:1234567890:alerta-test",))
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        SnsVerifier(fetch=pinned_aws_certificate).verify(auth, env)


def test_a_certificate_that_cannot_be_fetched_is_retriable_not_a_refusal() -> None:
    # SNS never retries a 4xx: a 401 here would drop the alarm. 503 with Retry-After it retries.
    def offline(url: str) -> bytes:
        raise OSError("network unreachable")
    env = sns_envelope(json.loads(fixture("aws-sns-cloudwatch-alarm.json")))
    auth = SourceAuth("sns", allowed_topics=("arn:aws:sns:eu-west-1:1234567890:alerta-test",))
    with pytest.raises(TemporarilyUnavailable, match="could not fetch the signing certificate") as info:
        SnsVerifier(fetch=offline).verify(auth, env)
    assert info.value.status == 503 and info.value.retry_after > 0


@pytest.mark.parametrize("url", [
    "https://sns.s3.amazonaws.com/SimpleNotificationService-x.pem",  # an S3 bucket named "sns"
    "https://sns.s3-external-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.my-bucket.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.txt",  # not a .pem
    "https://sns.eu-west-1.amazonaws.com/?Action=x&file=.pem",
])
def test_sns_certificate_urls_on_bucket_hosts_or_not_pem_are_refused(url: str) -> None:
    with pytest.raises(AuthenticationFailed, match="SigningCertURL"):
        check_signing_cert_url(SourceAuth("sns"), url)


@pytest.mark.parametrize("url", [
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-6aad65c2f9911b05cd53efda11f913f9.pem",
    "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem",
    "https://sns.ap-southeast-2.amazonaws.com/SimpleNotificationService-x.pem",
])
def test_sns_certificate_urls_of_real_regions_pass(url: str) -> None:
    check_signing_cert_url(SourceAuth("sns"), url)


@pytest.mark.parametrize("patterns", [["*"], ["arn:*"], ["arn:aws:sns:*:*:*"], ["arn:aws:sns:eu-west-1:*:alarms"],
                                      ["arn:aws:sns:eu-west-1:123456789012:alarms", "*"], ["alarms"]])
def test_topic_patterns_that_admit_other_accounts_are_refused(patterns: list[str]) -> None:
    from pydantic import ValidationError

    from sevflow.blocks import AlertSource

    with pytest.raises(AuthenticationFailed, match="not a topic ARN"):
        check_topic_patterns(patterns, "b")
    with pytest.raises(ValidationError, match="not a topic ARN"):
        AlertSource(allowed_topics=patterns)
    AlertSource(allowed_topics=["arn:aws:sns:eu-west-1:123456789012:alarms-*"])  # a glob in the name is fine


def test_grafana_timestamps_that_are_not_plain_unix_seconds_are_401_not_errors() -> None:
    body = fixture(GF["body_file"])
    stamped = SourceAuth("grafana", signing_secrets=(GF["secret"],), timestamp_header="X-Grafana-Alerting-Timestamp")
    sig = GF["with_timestamp"]["X-Grafana-Alerting-Signature"]
    for stamp in ("9" * 400, "١٢٣٤٥٦٧٨٩٠", "²³", "1e9", "-1", " ", "0x10", "12.5"):
        with pytest.raises(AuthenticationFailed, match="unix seconds"):
            check_headers_and_body(stamped, {"x-grafana-alerting-signature": sig,
                                             "x-grafana-alerting-timestamp": stamp}, body)


def test_basic_auth() -> None:
    auth = SourceAuth("alertmanager", basic_username="am", basic_password="pw-9f1")
    good = base64.b64encode(b"am:pw-9f1").decode()
    check_headers_and_body(auth, {"authorization": f"Basic {good}"}, b"{}")
    for value in ("", f"Basic {base64.b64encode(b'am:pw-9f2').decode()}",
                  f"Basic {base64.b64encode(b'other:pw-9f1').decode()}", "Basic !!!", "Basic " + "A" * 5000,
                  f"Basic {base64.b64encode(b'am').decode()}", "Bearer pw-9f1",
                  f"Basic {base64.b64encode(bytes([0xff, 0xfe])).decode()}"):
        with pytest.raises(AuthenticationFailed) as info:
            check_headers_and_body(auth, {"authorization": value}, b"{}")
        assert "pw-9f1" not in str(info.value)
    both = SourceAuth("alertmanager", bearer_token="tok", basic_username="am", basic_password="pw-9f1")
    check_headers_and_body(both, {"authorization": "Bearer tok"}, b"{}")
    check_headers_and_body(both, {"authorization": f"Basic {good}"}, b"{}")
