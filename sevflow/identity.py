"""Who answered, proven: SSH signatures over an answer, as git commit signing makes them.

An approver signs, with their own SSH key (a key file, or the ssh-agent when given the public
key), the exact answer: run, gate, plan digest, decision, name, reason and time. The flow
verifies it against the public key the approval policy lists for that name. A signature made
for another run, gate or plan, or for other words, does not verify. `ssh-keygen -Y` does the
cryptography (OpenSSH's SSHSIG format, namespace `sevflow-approval`).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from sevflow.errors import ApprovalError

NAMESPACE = "sevflow-approval"
_TIMEOUT = 30.0


def answer_message(*, run: str, gate: str, plan: str, decision: str, approver: str, reason: str,
                   signed_at: str) -> str:
    """The exact text an approver signs (canonical JSON)."""
    return json.dumps({"run": run, "gate": gate, "plan": plan, "decision": decision, "approver": approver,
                       "reason": reason, "signed_at": signed_at}, sort_keys=True, separators=(",", ":"))


def requester_message(*, run: str, requester: str, signed_at: str) -> str:
    return json.dumps({"run": run, "requester": requester, "signed_at": signed_at}, sort_keys=True,
                      separators=(",", ":"))


def sign(message: str, key: Path) -> str:
    """An armored SSH signature of `message` by `key` (a private key file, or a `.pub` file
    whose private half the ssh-agent holds). Raises ApprovalError with ssh-keygen's words."""
    key = Path(key).expanduser()
    if not key.exists():
        raise ApprovalError(f"No signing key at {key}: pass --key PATH (your SSH private key, or its .pub "
                            "with the key loaded in ssh-agent), or set SEVFLOW_SIGNING_KEY.")
    with tempfile.TemporaryDirectory(prefix="sevflow-sign-") as scratch:
        text = Path(scratch, "answer")
        text.write_text(message)
        done = subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE, str(text)],
                              capture_output=True, text=True, timeout=_TIMEOUT, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ApprovalError(f"Signing with {key} failed: {done.stderr.strip() or done.returncode}")
        return Path(scratch, "answer.sig").read_text()


def verify(message: str, signature: str, name: str, public_key: str) -> bool:
    """Whether `signature` is `name`'s signature (made with `public_key`) of exactly `message`."""
    if not signature.strip() or not public_key.strip():
        return False
    with tempfile.TemporaryDirectory(prefix="sevflow-verify-") as scratch:
        allowed = Path(scratch, "allowed_signers")
        # The principal is fixed here, so names with spaces or quotes cannot confuse the file.
        allowed.write_text(f'approver namespaces="{NAMESPACE}" {public_key.strip()}\n')
        sig = Path(scratch, "answer.sig")
        sig.write_text(signature)
        done = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "approver", "-n", NAMESPACE,
                               "-s", str(sig)], input=message, capture_output=True, text=True, timeout=_TIMEOUT)
        return done.returncode == 0


def key_identity(public_key: str) -> str:
    """The key itself (type and base64), without its comment: two names with one key are one."""
    parts = public_key.split()
    return " ".join(parts[:2])
