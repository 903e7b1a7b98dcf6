"""The shared alert fixtures (exact bytes) and an SNS signer for tests."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "alerts"
if not FIXTURES.is_dir():  # a clone elsewhere: the shared folder beside the work folder
    FIXTURES = Path("/work/shared/fixtures/alerts")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def vectors(name: str) -> dict[str, Any]:
    return json.loads(fixture(name))


class SnsSigner:
    """A certificate and key standing in for AWS's SNS signing certificate."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30)).sign(self.key, hashes.SHA256()))
        self.pem = cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, envelope: dict[str, Any], version: str = "1") -> dict[str, Any]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        from sevflow.intake.alerts import SnsEnvelope
        from sevflow.intake.auth import sns_string_to_sign

        out = dict(envelope, SignatureVersion=version, Signature="x")
        text = sns_string_to_sign(SnsEnvelope.model_validate(out))
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        out["Signature"] = base64.b64encode(self.key.sign(text, padding.PKCS1v15(), digest)).decode()
        return out


def sns_alarm(topic: str, alarm: str, state: str = "ALARM", cert_url: str = "", changed: str = "2026-11-26T10:00:00.000+0000",
              subscribe_url: str | None = None) -> dict[str, Any]:
    message = {"AlarmName": alarm, "AlarmDescription": f"{alarm} is in {state}", "NewStateValue": state,
               "OldStateValue": "OK", "StateChangeTime": changed, "Region": "EU (Ireland)",
               "Trigger": {"MetricName": "Errors", "Namespace": "AWS/Lambda", "Dimensions": []}}
    env = {"Type": "Notification", "MessageId": f"m-{alarm}-{state}", "TopicArn": topic,
           "Subject": f"{state}: {alarm}", "Message": json.dumps(message), "Timestamp": "2026-11-26T10:00:01.000Z",
           "SignatureVersion": "1", "Signature": "", "SigningCertURL": cert_url,
           "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe"}
    if subscribe_url is not None:
        env = {"Type": "SubscriptionConfirmation", "MessageId": "m-sub", "TopicArn": topic, "Token": "tok-123",
               "Message": "You have chosen to subscribe", "SubscribeURL": subscribe_url,
               "Timestamp": "2026-11-26T10:00:01.000Z", "SignatureVersion": "1", "Signature": "",
               "SigningCertURL": cert_url}
    return env
