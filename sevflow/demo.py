"""`sevflow up --demo`: a first rollback in a minute, without configuring anything.

It makes, under sevflow's state folder only (`$SEVFLOW_HOME/demo`, replaced on each start):

- `shop/`: a git repository with two releases: release 1 (healthy; tagged `good-release-1`
  and trailered `Known-Good: yes`, the markers the application rollback looks for) and
  release 2 (broken), the head of `main`;
- `live/`: what is deployed now, release 2;
- a tiny app (`python -m sevflow.demo PORT LIVE`, run by `sevflow up` beside the worker) whose
  `/health` answers 200 only when the deployed release is healthy;
- the `demo-shop` Service Target block: that repository, a deploy command that copies the
  checked-out release into `live/` (the app serves it from the next request on), the health URL,
  and the `demo` Approval Policy block letting the current user approve.

Rolling `demo-shop` back then shows the whole path: plan, gate, approval, change, health,
post-mortem.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEMO_SERVICE = "demo-shop"
DEMO_POLICY = "demo"
GOOD = "release 1: healthy\n"
BAD = "release 2: broken (the new checkout page throws)\n"


@dataclass
class Demo:
    folder: Path
    repo: Path
    live: Path
    port: int

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def app_command(self) -> list[str]:
        return [sys.executable, "-m", "sevflow.demo", str(self.port), str(self.live)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _git(repo: Path, *args: str) -> str:
    # Nothing of the user's own git configuration (hooks, signing, templates) applies, and
    # nothing is written outside the demo's folder.
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def prepare_demo(home: Path) -> Demo:
    """The demo's repository and deployed release, made afresh in `home/demo`. Files only."""
    folder = home / "demo"
    if folder.exists():
        shutil.rmtree(folder)
    repo, live = folder / "shop", folder / "live"
    repo.mkdir(parents=True)
    live.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    # The rollback commit is made in this repository: its identity is the demo's, so the
    # demo works whether or not the user has a git identity of their own.
    for key, value in (("user.name", "sevflow demo"), ("user.email", "demo@sevflow.invalid"),
                       ("commit.gpgsign", "false")):
        _git(repo, "config", key, value)
    (repo / "release.txt").write_text(GOOD)
    _git(repo, "add", "release.txt")
    _git(repo, "commit", "-q", "-m", "Release 1", "-m", "Known-Good: yes")
    _git(repo, "tag", "good-release-1")
    (repo / "release.txt").write_text(BAD)
    _git(repo, "commit", "-q", "-am", "Release 2: new checkout page")
    (live / "release.txt").write_text(BAD)  # what production runs now
    return Demo(folder, repo, live, _free_port())


def save_demo_blocks(demo: Demo) -> None:
    """The demo's Service Target and Approval Policy blocks, on the current Prefect API."""
    from sevflow.blocks import ApprovalPolicy, ApprovalRule, ServiceTarget

    ApprovalPolicy(rules=[ApprovalRule(change_kind="*", approvers=[getpass.getuser()])]).save(
        DEMO_POLICY, overwrite=True)
    ServiceTarget(  # no `service`: the block's name is the service's name
        repository=str(demo.repo),
        branch="main",
        deploy_command=f"cp release.txt {shlex.quote(str(demo.live))}/release.txt",
        health_check_urls=[demo.health_url],
        health_check_budget_seconds=15.0,
        command_timeout_seconds=60.0,
        build_disk_space_mb=0,
        approval_policy=DEMO_POLICY,
    ).save(DEMO_SERVICE, overwrite=True)


def serve_app(port: int, live: Path) -> None:
    """The demo's app: `/health` answers 200 while the deployed release is healthy, else 500."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            release = (live / "release.txt").read_text() if (live / "release.txt").exists() else "nothing deployed\n"
            healthy = "healthy" in release
            status = 200 if healthy or self.path.split("?")[0] != "/health" else 500
            body = f"demo-shop: {release}".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    serve_app(int(sys.argv[1]), Path(sys.argv[2]))
