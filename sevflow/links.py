"""One-click approval links: possession of the link, delivered only to that approver, is the proof.

Each approver a tier's notification names gets a link of their own,
`<approval page>/approve/<run>/<link id>/<token>`, bound to the approver, run, gate and plan
digest, expiring, and good for one answer.

What is stored, and where. The token is random (32 bytes) and is never stored: the notification
body is its only copy. The run holds a *link record* (`sevflow-link-<id>`): approver, run, gate,
plan digest, expiry, `sha256(sha256(token))`, and a MAC over all of these made with the link
key, a file on the worker's host (`$SEVFLOW_HOME/approval-links.key`, mode 0600, or
`SEVFLOW_APPROVAL_LINK_KEY`), which the Prefect API never sees. So someone who can write to the
API can neither read a token nor invent a link the flow would accept.

How an answer proves itself. The approval page (served next to the intake) checks the token
against the record and answers the gate through the ordinary resume call with `link_id` and
`link_proof = sha256(token)`. The flow accepts it as proven only if the link record's MAC is
right, `sha256(link_proof)` is the stored hash, the record names this run, gate, plan and
approver, the answer arrived before the link expired, and this gate has not counted an answer
through that link before. The proof (a hash of the token) appears in the stored answer; it
reveals nothing of the token and is worthless once used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

LINK_PREFIX = "sevflow-link-"
_TOKEN_BYTES = 32


class LinkRecord(BaseModel):
    link_id: str
    run: str
    gate: str
    plan_digest: str
    approver: str
    expires_at: datetime
    proof_hash: str
    mac: str = ""

    def signed_fields(self) -> str:
        return json.dumps({"link_id": self.link_id, "run": self.run, "gate": self.gate, "plan": self.plan_digest,
                           "approver": self.approver, "expires_at": self.expires_at.isoformat(),
                           "proof_hash": self.proof_hash}, sort_keys=True, separators=(",", ":"))


def record_key(link_id: str) -> str:
    return f"{LINK_PREFIX}{link_id}"


def used_key(link_id: str) -> str:
    return f"{LINK_PREFIX}{link_id}-used"


def key_path() -> Path:
    explicit = os.environ.get("SEVFLOW_APPROVAL_LINK_KEY")
    if explicit:
        return Path(explicit).expanduser()
    home = Path(os.environ.get("SEVFLOW_HOME", Path.home() / ".sevflow")).expanduser()
    return home / "approval-links.key"


def link_key(create: bool = False) -> bytes:
    """The link key, made (0600) on first use when `create`. Every host that runs flows must
    hold the same file (copy it) for links issued on one to be accepted on another."""
    path = key_path()
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it a moment ago
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    try:
        return path.read_text().strip().encode()
    except FileNotFoundError:
        return b""


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def proof_of(token: str) -> str:
    """What the page writes with the answer: a hash of the token (never the token)."""
    return _h(token)


def _mac(record: LinkRecord, key: bytes) -> str:
    return hmac.new(key, record.signed_fields().encode(), hashlib.sha256).hexdigest()


def issue(*, run: str, gate: str, plan_digest: str, approver: str, expires_at: datetime) -> tuple[LinkRecord, str]:
    """A new link: its record (to store on the run) and its token (for the notification only)."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    record = LinkRecord(link_id=secrets.token_hex(8), run=run, gate=gate, plan_digest=plan_digest,
                        approver=approver, expires_at=expires_at, proof_hash=_h(proof_of(token)))
    record.mac = _mac(record, link_key(create=True))
    return record, token


def url(base: str, record: LinkRecord, token: str) -> str:
    return f"{base.rstrip('/')}/approve/{record.run}/{record.link_id}/{token}"


def token_matches(record: LinkRecord, token: str) -> bool:
    return hmac.compare_digest(record.proof_hash, _h(proof_of(token)))


def check_answer(stored: Any, *, run: str, gate: str, plan_digest: str, approver: str, proof: str,
                 received_at: datetime, normalise: Any = str) -> tuple[bool, str]:
    """Whether an answer given through link `stored` (the record read from the run) is proven:
    (True, how) or (False, why)."""
    if not isinstance(stored, dict):
        return False, "no such approval link on this run"
    try:
        record = LinkRecord.model_validate(stored)
    except ValueError:
        return False, "the approval link's record is malformed"
    key = link_key()
    if not key or not hmac.compare_digest(record.mac, _mac(record, key)):
        return False, "the approval link was not issued by sevflow (its record's MAC is wrong)"
    if (record.run, record.gate, record.plan_digest) != (run, gate, plan_digest):
        return False, "the approval link was issued for another run, gate or plan"
    if normalise(record.approver) != normalise(approver):
        return False, f"the approval link belongs to {record.approver!r}, not {approver!r}"
    if not hmac.compare_digest(record.proof_hash, _h(proof)):
        return False, "the answer does not carry the approval link's proof"
    if received_at > record.expires_at:
        return False, f"the approval link expired at {record.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    return True, f"proven by {record.approver}'s own approval link"


def expiry(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
