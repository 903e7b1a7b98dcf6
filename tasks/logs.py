"""Reading a service's recent logs (runbook, Production System Down: "Check logs").

From the outage profile's one source: the end of a file, the output of a read-only command
(e.g. `journalctl -u shop -n 200`), or a URL answering text. Read-only; finite timeouts; the
error lines are picked out by the pure :func:`sevflow.outage.pick_error_lines`, and every
secret of the profile is masked before anything is kept.
"""

from __future__ import annotations

import subprocess
from collections import deque
from pathlib import Path

import httpx

from sevflow.blocks.outage import OutageProfile
from sevflow.models import OutageSpec
from sevflow.outage import LogExcerpt, pick_error_lines
from sevflow.tasks.common import step
from sevflow.tasks.host import mask_secrets

COMMAND_TIMEOUT_SECONDS = 30.0
URL_TIMEOUT_SECONDS = 10.0


@step("Check logs")
def check_logs(profile: OutageSpec, cycle: int) -> LogExcerpt:
    """The last `log_lines` lines of the configured source with its error lines picked out.
    Changes nothing. A source that cannot be read is reported, not fatal: diagnosis goes on."""
    if profile.log_file:
        source = f"file:{profile.log_file}"
    elif profile.log_command:
        source = f"command:{profile.log_command}"
    elif profile.log_url:
        source = f"url:{profile.log_url}"
    else:
        return LogExcerpt(source="", error="no log source configured in the outage profile")
    try:
        lines = _read(profile)
    except (OSError, subprocess.SubprocessError, httpx.HTTPError, RuntimeError) as exc:
        return LogExcerpt(source=source, error=f"could not read the logs: {type(exc).__name__}")
    secrets = OutageProfile.for_service(profile.block).secret_values() if profile.status_page_token else []
    lines = [mask_secrets(line, secrets) for line in lines[-profile.log_lines:]]
    return LogExcerpt(source=source, lines_read=len(lines), error_lines=pick_error_lines(lines, profile.error_pattern))


def _read(profile: OutageSpec) -> list[str]:
    if profile.log_file:
        with Path(profile.log_file).expanduser().open(errors="replace") as handle:
            return list(deque(handle, maxlen=profile.log_lines))
    if profile.log_command:
        done = subprocess.run(["bash", "-c", profile.log_command], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL, errors="replace")
        if done.returncode != 0:
            raise RuntimeError(f"exit status {done.returncode}")
        return done.stdout.splitlines()
    assert profile.log_url
    response = httpx.get(profile.log_url, timeout=URL_TIMEOUT_SECONDS)
    response.raise_for_status()
    return response.text.splitlines()
