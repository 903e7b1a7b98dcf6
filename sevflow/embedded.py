"""`sevflow up`: the embedded default. One command starts, on this machine,

- a Prefect server on SQLite in a local state folder (loopback only, analytics off),
  unless PREFECT_API_URL names a server to use;
- a worker serving every procedure (`sevflow serve`);
- the alert intake (`sevflow intake`) on 127.0.0.1:8787, rules in `$SEVFLOW_HOME/intake-rules.yaml`.

Ctrl-C stops everything it started; running it again reuses the state folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sevflow.errors import ConfigurationError


def state_home() -> Path:
    return Path(os.environ.get("SEVFLOW_HOME", Path.home() / ".sevflow")).expanduser()


def server_environment(home: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in list(env):
        # A database URL or profile meant for another server must not leak into this one.
        if key.startswith("PREFECT_API_DATABASE") or key in {"PREFECT_API_URL", "PREFECT_PROFILE"}:
            env.pop(key)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        # The UI asks the server where the API is; without this it says :4200 whatever the port.
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
    )
    return env


def wait_healthy(api_url: str, process: subprocess.Popen[bytes] | None, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ConfigurationError(f"The Prefect server exited with code {process.returncode} while starting.")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise ConfigurationError(f"The Prefect server at {api_url} did not answer /health within {timeout:.0f}s.")


def _check_port_free(port: int, what: str) -> None:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigurationError(f"Port {port} for {what} is already in use; pass another port.") from None


def start_server(home: Path, port: int, log_file: Path) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    try:
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
    except httpx.TransportError:
        pass
    else:
        raise ConfigurationError(
            f"Port {port} is already in use. Stop what uses it, pass --port, or point PREFECT_API_URL at "
            "that server if it is a Prefect server."
        )
    out = log_file.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_environment(home, port), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop a child and everything it started (it leads its own process group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_all(processes: list[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    """Stop children together: SIGTERM to all, one shared grace period, then SIGKILL."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def up(port: int = 4200, limit: int = 20, escalation_interval: float = 30.0, intake_port: int = 8787,
       echo=print) -> int:
    home = state_home()
    home.mkdir(parents=True, exist_ok=True)
    # `kill` or a service manager stops it like Ctrl-C does: children first. SIGINT gets the
    # handler explicitly: a process started in the background by a non-interactive shell
    # inherits SIGINT *ignored*, and Python then never raises KeyboardInterrupt (found in CI).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    children: list[subprocess.Popen[bytes]] = []
    api_url = os.environ.get("PREFECT_API_URL")
    try:
        if api_url:
            echo(f"Using the Prefect server at {api_url} (PREFECT_API_URL).")
            wait_healthy(api_url, None, timeout=15)
            worker_env = dict(os.environ)
        else:
            api_url = f"http://127.0.0.1:{port}/api"
            echo(f"Starting a Prefect server on SQLite in {home / 'prefect'} (log: {home / 'server.log'}) ...")
            children.append(start_server(home, port, home / "server.log"))
            wait_healthy(api_url, children[0])
            worker_env = server_environment(home, port)
            worker_env["PREFECT_API_URL"] = api_url
        ui = api_url[: -len("/api")] if api_url.endswith("/api") else api_url
        worker_env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        children.append(subprocess.Popen(
            [sys.executable, "-m", "sevflow", "serve", "--limit", str(limit),
             "--escalation-interval", str(escalation_interval)],
            env=worker_env, stdin=subprocess.DEVNULL, start_new_session=True,
        ))
        if intake_port:
            _check_port_free(intake_port, "the alert intake (--intake-port)")
            children.append(subprocess.Popen(
                [sys.executable, "-m", "sevflow", "intake", "--port", str(intake_port)],
                env=worker_env | {"SEVFLOW_HOME": str(home)}, stdin=subprocess.DEVNULL, start_new_session=True,
            ))
        echo("")
        echo(f"sevflow is up. Prefect UI: {ui}")
        echo(f"  Deployments: {ui}/deployments  (Run → application-rollback, configuration-rollback)")
        echo(f"  Blocks:      {ui}/blocks  (add a 'sevflow Service Target'; edit 'sevflow Approval Policy' default)")
        echo("  Waiting approvals:  PREFECT_API_URL=" + api_url + " sevflow pending")
        echo("  Approve:            sevflow approve <flow-run-id> --as NAME --reason TEXT  (or Resume in the UI)")
        if intake_port:
            echo(f"  Alert intake:       http://127.0.0.1:{intake_port}/alerts/<source>  (API docs: "
                 f"http://127.0.0.1:{intake_port}/docs; rules: {home / 'intake-rules.yaml'}; one "
                 "'sevflow Alert Source' block per sender)")
        echo("Ctrl-C stops everything.")
        while True:
            for child in children:
                if child.poll() is not None:
                    echo(f"A sevflow process exited (code {child.returncode}); stopping.")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        echo("\nStopping ...")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave children behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(children)
