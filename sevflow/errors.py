"""sevflow's exceptions, one tree with one root.

    SevflowError
    ├── ConfigurationError     a block, policy or parameter is missing or wrong
    │   └── UnknownServiceError    no service target block with that name
    ├── PreflightError         a check before any change failed (dirty tree, bad ref,
    │                          missing repository, missing file); nothing was changed
    ├── CommandFailed          a build, deploy or reload command exited non-zero
    ├── VerificationFailed     health checks did not pass inside their time budget
    └── ApprovalError          the gate could not be asked or answered

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
