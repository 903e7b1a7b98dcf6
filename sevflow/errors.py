"""sevflow's exceptions, one tree with one root.

    SevflowError
    ├── ConfigurationError     a block, policy or parameter is missing or wrong
    │   └── UnknownServiceError    no service target block with that name
    ├── PreflightError         a check before any change failed (dirty tree, bad ref,
    │   │                      missing repository, missing file); nothing was changed
    │   └── DriftError             what the approved plan assumed no longer holds (HEAD
    │                              moved, block edited); nothing was changed
    │   └── BackupIntegrityError   a backup's checksum or table of contents did not check
    │                              out; nothing was restored
    ├── DatabaseError          a statement, pg_dump or pg_restore failed (the message says which)
    ├── CommandFailed          a build, deploy or reload command exited non-zero
    ├── VerificationFailed     health checks did not pass inside their time budget
    ├── ApprovalError          the gate could not be asked or answered
    └── IntakeError            an alert delivery was refused (the intake answers 4xx)
        ├── PayloadError           the body is not a payload of that sender (400/422)
        ├── AuthenticationFailed   token, signature or certificate did not check out (401)
        ├── TemporarilyUnavailable a check needs something missing for now (503, Retry-After)
        └── RulesError             the routing rules file is invalid (stops start-up)

Flows let these propagate, so the run ends Failed with the message, which is written for
the on-call engineer who reads it in the UI.
"""

from __future__ import annotations


class SevflowError(Exception):
    """Root of every error sevflow raises on purpose."""


class ConfigurationError(SevflowError):
    """A block, policy or parameter is missing or inconsistent."""


class UnknownServiceError(ConfigurationError):
    """No service target block is registered under the requested name."""


class PreflightError(SevflowError):
    """A check made before any change failed; nothing has been changed."""


class DriftError(PreflightError):
    """A precondition of the approved plan no longer holds; the step changed nothing."""


class BackupIntegrityError(PreflightError):
    """A backup's sha256 differs from the one recorded with it, none was recorded, or its
    table of contents cannot be read: it is refused before anything is restored."""


class DatabaseError(SevflowError):
    """A SQL statement, pg_dump or pg_restore failed; what it changed is in the message."""


class CommandFailed(SevflowError):
    """A build, deploy or reload command exited non-zero."""

    def __init__(self, message: str, *, returncode: int | None = None, output: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.output = output


class VerificationFailed(SevflowError):
    """Health checks did not pass inside their time budget."""


class ApprovalError(SevflowError):
    """The approval gate could not be opened or answered."""


class IntakeError(SevflowError):
    """An alert delivery was refused; `status` is the HTTP answer the sender gets."""

    status = 400


class PayloadError(IntakeError):
    """The body is not JSON (400) or not the shape that sender sends (422)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationFailed(IntakeError):
    """Bearer token, HMAC signature or SNS certificate did not check out."""

    status = 401


class TemporarilyUnavailable(IntakeError):
    """A check needs something that is missing for now (a certificate that cannot be fetched,
    credentials not loaded, a store that cannot write): the sender should retry."""

    status = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RulesError(IntakeError, ConfigurationError):
    """The routing rules file has an error; the message names the line."""
