"""`sevflow up`: the embedded default. One command starts, on this machine,

- a Prefect server on SQLite in a local state folder (loopback only, analytics off),
  unless PREFECT_API_URL names a server to use;
- a worker serving every procedure (`sevflow serve`);
- the alert intake (`sevflow intake`) on 127.0.0.1:8787, rules in `$SEVFLOW_HOME/intake-rules.yaml`.

`--database postgresql://...` puts the server on PostgreSQL instead of SQLite.

`--auth` locks the API: the server gets Prefect's basic-auth string
(PREFECT_SERVER_API_AUTH_STRING), the worker and the intake the same string as clients
(PREFECT_API_AUTH_STRING), and `sevflow` commands read it from the state folder
(`$SEVFLOW_HOME/api-auth`, mode 0600, made on first use). It is never printed; the UI asks for it.

A service you can leave running: a child that exits is restarted with backoff (1, 2, 4 … 30 s),
logged, while the others keep running. Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stop
everything it started; so does SIGKILL, through a watchdog process (sevflow._guard) and
PR_SET_PDEATHSIG, so no orphan keeps the port. Running it again reuses the state folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from sevflow.errors import ConfigurationError


def state_home() -> Path:
    return Path(os.environ.get("SEVFLOW_HOME", Path.home() / ".sevflow")).expanduser()


AUTH_FILE = "api-auth"
AUTH_URL_FILE = "api-auth.url"


def auth_string(home: Path, api_url: str) -> str:
    """The API's basic-auth string (`sevflow:<random>`), made once (mode 0600) and kept in the
    state folder, with the API address it is for (so commands never send it elsewhere)."""
    import secrets

    home.mkdir(parents=True, exist_ok=True)
    path = home / AUTH_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(f"sevflow:{secrets.token_urlsafe(24)}")
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(f"{path} holds the API's password but others may read it: chmod 600 {path}")
    (home / AUTH_URL_FILE).write_text(api_url)
    return path.read_text().strip()


def client_auth_from_state(environ: dict[str, str] | None = None) -> bool:
    """For `sevflow` commands: when PREFECT_API_URL is the API `sevflow up --auth` locked, and no
    PREFECT_API_AUTH_STRING is set, use the string kept in the state folder. Returns whether it did."""
    environ = os.environ if environ is None else environ
    if environ.get("PREFECT_API_AUTH_STRING"):
        return False
    home = state_home()
    try:
        locked_url = (home / AUTH_URL_FILE).read_text().strip()
        secret = (home / AUTH_FILE).read_text().strip()
    except OSError:
        return False
    if not secret or environ.get("PREFECT_API_URL", "").rstrip("/") != locked_url.rstrip("/"):
        return False
    environ["PREFECT_API_AUTH_STRING"] = secret
    return True


def database_url(url: str) -> str:
    """`postgresql://user@host/db` (as psql takes it) → the SQLAlchemy URL Prefect's server takes."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    if url.startswith("sqlite"):
        return url
    raise ConfigurationError(f"--database {url!r}: give a postgresql://user[:password]@host[:port]/database URL.")


def server_environment(home: Path, port: int, database: str | None = None,
                       auth: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key in list(env):
        # A database URL, profile or password meant for another server must not leak into this one.
        if key.startswith("PREFECT_API_DATABASE") or key in {"PREFECT_API_URL", "PREFECT_PROFILE",
                                                               "PREFECT_API_AUTH_STRING",
                                                               "PREFECT_SERVER_API_AUTH_STRING"}:
            env.pop(key)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        # The UI asks the server where the API is; without this it says :4200 whatever the port.
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
    )
    if database:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url(database)
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    return env


def wait_healthy(api_url: str, process: subprocess.Popen[bytes] | None, timeout: float = 300.0,
                 note: Callable[[str], Any] | None = None) -> None:
    """Wait for the server's /health. A first start creates its database (migrations), which on
    a busy machine takes minutes: say so every 30 s rather than give up early."""
    started = time.monotonic()
    deadline, next_note = started + timeout, started + 30
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ConfigurationError(f"The Prefect server exited with code {process.returncode} while starting.")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if note is not None and time.monotonic() >= next_note:
            note(f"  still starting ({time.monotonic() - started:.0f} s; a first start creates its database) ...")
            next_note += 30
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


def start_server(home: Path, port: int, log_file: Path, database: str | None = None,
                 auth: str | None = None) -> subprocess.Popen[bytes]:
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
        env=server_environment(home, port, database, auth), stdout=out, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
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
    """Stop children together: SIGTERM to each leader (a runner then lets its flow runs finish or
    cancels them, rather than each run being signalled behind its back and left Crashed), one
    shared grace period, then SIGKILL to whatever is left of their process groups."""
    from sevflow._guard import stop_groups

    stop_groups([p.pid for p in processes if p.poll() is None], grace,
                reap=lambda pid: next(p for p in processes if p.pid == pid).poll() is not None)
    for process in processes:
        process.wait()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `sevflow up` dies (Linux's PR_SET_PDEATHSIG).
    The watchdog (sevflow._guard) covers the rest of each child's process group."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog alone stops the children


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _Watchdog:
    """sevflow._guard, told about each child: stops them if `sevflow up` dies."""

    def __init__(self, grace: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sevflow._guard", str(grace)], stdin=subprocess.PIPE,
            start_new_session=True,  # neither a closed terminal nor a kill of our group reaches it
        )

    def _say(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it died: the children still die with us (PR_SET_PDEATHSIG)

    def watch(self, pid: int) -> None:
        self._say(f"+ {pid}")

    def forget(self, pid: int) -> None:
        self._say(f"- {pid}")

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


class _Child:
    """One supervised process of `sevflow up`: restarted with backoff when it exits."""

    def __init__(self, name: str, start: Callable[[], subprocess.Popen[bytes]], log: str) -> None:
        self.name, self._start, self.log = name, start, log
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restart_at: float | None = None

    def start(self, watchdog: _Watchdog) -> None:
        self.process = self._start()
        self.started_at = time.monotonic()
        self.restart_at = None
        watchdog.watch(self.process.pid)


RESTART_BACKOFF_MAX = 30.0
STABLE_SECONDS = 60.0  # a child that ran this long before exiting starts again from the shortest backoff


def _supervise(children: list[_Child], watchdog: _Watchdog, echo: Callable[..., Any],
               after_start: Callable[[_Child], None]) -> None:
    """Forever: restart each child that exited, with exponential backoff, leaving the others be."""
    while True:
        now = time.monotonic()
        for child in children:
            if child.process is None:
                if child.restart_at is not None and now >= child.restart_at:
                    echo(f"{_now()} restarting {child.name} (restart {child.failures})")
                    child.start(watchdog)
                    after_start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            watchdog.forget(child.process.pid)
            if now - child.started_at >= STABLE_SECONDS:
                child.failures = 0
            delay = min(RESTART_BACKOFF_MAX, 2.0 ** child.failures)
            child.failures += 1
            child.process = None
            child.restart_at = now + delay
            echo(f"{_now()} {child.name} exited (code {code}); restarting it in {delay:.0f} s, the others keep "
                 f"running (log: {child.log})")
        time.sleep(0.2)


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _start_demo(home: Path, api_url: str, env: dict[str, str], children: list[_Child], watchdog: _Watchdog) -> Any:
    """Make the demo service (files, blocks) and start its app as one more supervised child."""
    if "PREFECT_HOME" in env:
        # Prefect makes its home folder when first imported: the state folder's, not ~/.prefect.
        os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from sevflow.demo import prepare_demo, save_demo_blocks

    demo = prepare_demo(home)
    updates: dict[Any, Any] = {PREFECT_API_URL: api_url}
    if env.get("PREFECT_API_AUTH_STRING"):  # --auth: this process's client needs the password too
        updates[PREFECT_API_AUTH_STRING] = env["PREFECT_API_AUTH_STRING"]
    with temporary_settings(updates=updates):
        save_demo_blocks(demo)
    children.append(_Child("the demo app", lambda: subprocess.Popen(
        demo.app_command(), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=_die_with_parent), "this output"))
    children[-1].start(watchdog)
    return demo


def _print_demo(demo: Any, api_url: str, ui: str, echo: Callable[..., Any], timeout: float = 180.0,
                auth: str | None = None) -> None:
    """Once the worker has registered the application rollback: the one command and the one
    link that start the demo's rollback."""
    from sevflow.demo import DEMO_SERVICE
    from sevflow.deployments import deployment_path

    def say(text: str) -> None:
        try:
            echo(text, soft_wrap=True)  # rich: one line each, never broken, so they can be copied
        except TypeError:
            echo(text)

    path = deployment_path("application-rollback")
    deadline = time.monotonic() + timeout
    deployment_id = None
    while deployment_id is None and time.monotonic() < deadline:
        try:
            found = httpx.get(f"{api_url}/deployments/name/{path}", timeout=5,
                              auth=tuple(auth.split(":", 1)) if auth else None)  # type: ignore[arg-type]
            if found.status_code == 200:
                deployment_id = found.json()["id"]
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    say("")
    say(f"Demo: the service {DEMO_SERVICE} runs its broken release 2; its health check {demo.health_url} "
         "answers 500.")
    say("  Roll it back (you may approve it):")
    say(f"    PREFECT_API_URL={api_url} sevflow run application-rollback --param service={DEMO_SERVICE}")
    if deployment_id:
        say(f"    or in the UI: {ui}/deployments/deployment/{deployment_id}/run  (service: {DEMO_SERVICE})")
    else:
        say(f"    or in the UI: {ui}/deployments → {path} → Run  (service: {DEMO_SERVICE})")
    say(f"  Its files: {demo.folder} (made afresh by each `sevflow up --demo`).")


def up(port: int = 4200, limit: int = 20, escalation_interval: float = 30.0, intake_port: int = 8787,
       echo: Callable[..., Any] = print, database: str | None = None, auth: bool = False,
       demo: bool = False) -> int:
    home = state_home()
    home.mkdir(parents=True, exist_ok=True)
    # `kill`, a service manager or a closed terminal (SIGHUP) stops it like Ctrl-C does: children
    # first. SIGINT gets the handler explicitly: a process started in the background by a
    # non-interactive shell inherits SIGINT *ignored*, and Python then never raises
    # KeyboardInterrupt (found in CI). SIGKILL cannot be caught: the watchdog covers it.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    children: list[_Child] = []
    watchdog = _Watchdog(grace=15.0)
    api_url = os.environ.get("PREFECT_API_URL")
    try:
        if api_url:
            if database:
                raise ConfigurationError("--database starts sevflow's own server; PREFECT_API_URL names another one.")
            if auth:
                raise ConfigurationError(
                    "--auth locks sevflow's own server; PREFECT_API_URL names another one. Lock that server "
                    "yourself (PREFECT_SERVER_API_AUTH_STRING on it, PREFECT_API_AUTH_STRING here: README, "
                    "\"Threat model\").")
            echo(f"Using the Prefect server at {api_url} (PREFECT_API_URL).")
            wait_healthy(api_url, None, timeout=15)
            worker_env = dict(os.environ)
        else:
            api_url = f"http://127.0.0.1:{port}/api"
            where = f"PostgreSQL ({database.split('@')[-1]})" if database else f"SQLite in {home / 'prefect'}"
            if database:
                database_url(database)  # a wrong URL stops here, before anything starts
            echo(f"Starting a Prefect server on {where} (log: {home / 'server.log'}) ...")
            secret = auth_string(home, api_url) if auth else None
            if auth:
                echo(f"API locked (--auth): the password is in {home / AUTH_FILE} (mode 0600); the UI asks for it, "
                     "`sevflow` commands read it from there.")
            server = _Child("the Prefect server",
                            lambda: start_server(home, port, home / "server.log", database, secret),
                            str(home / "server.log"))
            children.append(server)
            server.start(watchdog)
            assert server.process is not None
            wait_healthy(api_url, server.process, note=echo)
            worker_env = server_environment(home, port, database)
            worker_env["PREFECT_API_URL"] = api_url
            if secret:
                worker_env["PREFECT_API_AUTH_STRING"] = secret
        ui = api_url[: -len("/api")] if api_url.endswith("/api") else api_url
        worker_env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

        def spawn(*args: str, env: dict[str, str] = worker_env) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "sevflow", *args], env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_die_with_parent)

        children.append(_Child("the worker (sevflow serve)", lambda: spawn(
            "serve", "--limit", str(limit), "--escalation-interval", str(escalation_interval)), "this output"))
        children[-1].start(watchdog)
        demo_service = _start_demo(home, api_url, worker_env, children, watchdog) if demo else None
        if intake_port:
            _check_port_free(intake_port, "the alert intake (--intake-port)")
            intake_env = worker_env | {"SEVFLOW_HOME": str(home)}
            children.append(_Child("the alert intake", lambda: spawn(
                "intake", "--port", str(intake_port), env=intake_env), "this output"))
            children[-1].start(watchdog)
        echo("")
        echo(f"sevflow is up. Prefect UI: {ui}")
        echo(f"  Deployments: {ui}/deployments  (Run → a procedure: application-rollback, production-system-down, ...)")
        echo(f"  Blocks:      {ui}/blocks  (add a 'sevflow Service Target'; edit 'sevflow Approval Policy' default)")
        echo("  Waiting approvals:  PREFECT_API_URL=" + api_url + " sevflow pending")
        echo("  Approve:            sevflow approve <flow-run-id> --as NAME --reason TEXT  (or Resume in the UI)")
        if intake_port:
            echo(f"  Alert intake:       http://127.0.0.1:{intake_port}/alerts/<source>  (API docs: "
                 f"http://127.0.0.1:{intake_port}/docs; rules: {home / 'intake-rules.yaml'}; one "
                 "'sevflow Alert Source' block per sender)")
            echo(f"  Approval page:      http://127.0.0.1:{intake_port}  (set it as approval_page_url in the approval "
                 "policy: approvers a tier notifies then get one-click links)")
        for child in children:
            if child.process is not None:
                echo(f"  {child.name}: pid {child.process.pid}")
        if demo_service is not None:
            _print_demo(demo_service, api_url, ui, echo, auth=worker_env.get("PREFECT_API_AUTH_STRING"))
        echo("Ctrl-C stops everything.")

        def after_start(child: _Child) -> None:
            assert child.process is not None
            echo(f"{_now()} {child.name} started again, pid {child.process.pid}")
            if child is children[0] and not os.environ.get("PREFECT_API_URL"):
                try:
                    wait_healthy(api_url, child.process)
                except ConfigurationError as exc:
                    echo(f"{_now()} {exc}")

        _supervise(children, watchdog, echo, after_start)
        return 1  # not reached: only a signal ends supervision
    except KeyboardInterrupt:
        echo("\nStopping ...")
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not leave children behind
        # The worker and the intake first, while the server still answers: runs in flight can
        # then end, and say so, instead of being left Pending or Running on a server gone.
        server = [c.process for c in children[:1] if c.process is not None and not os.environ.get("PREFECT_API_URL")]
        others = [c.process for c in children if c.process is not None and c.process not in server]
        for group in (others, server):
            stop_all(group)
            for process in group:
                watchdog.forget(process.pid)
        watchdog.close()
