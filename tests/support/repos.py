"""A service's git repository, made for real in a temporary folder."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def git(repo: Path, *args: str, when: str | None = None) -> str:
    """Run git in `repo`; `when` (ISO 8601) dates the commits it makes."""
    dates = {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when} if when else {}
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True,
        env={"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin",
             "HOME": str(repo), **dates},
    ).stdout.strip()


@dataclass
class ServiceRepo:
    path: Path
    deploy_dir: Path
    commits: dict[str, str] = field(default_factory=dict)

    when: str | None = None  # commits made with this date (an old history: no recent deploy)

    def commit(self, label: str, files: dict[str, str], message: str, tag: str | None = None) -> str:
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message, when=self.when)
        sha = git(self.path, "rev-parse", "HEAD")
        if tag:
            git(self.path, "tag", tag)
        self.commits[label] = sha
        return sha

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def log(self) -> list[str]:
        return git(self.path, "log", "--format=%H", "main").split()

    def status(self) -> str:
        return git(self.path, "status", "--porcelain", "--ignored")

    def snapshot(self) -> dict[str, object]:
        """Everything a rollback could change: refs, commits, index and working tree."""
        files = {
            str(p.relative_to(self.path)): p.read_bytes()
            for p in sorted(self.path.rglob("*")) if p.is_file() and ".git" not in p.relative_to(self.path).parts
        }
        return {
            "refs": git(self.path, "show-ref"),
            "head": git(self.path, "rev-parse", "HEAD"),
            "status": self.status(),
            "files": files,
            "deployed": (self.deploy_dir / "current").read_bytes() if (self.deploy_dir / "current").exists() else None,
            "deploys": (self.deploy_dir / "deploys.log").read_bytes() if (self.deploy_dir / "deploys.log").exists() else None,
        }


def make_service_repo(root: Path, when: str | None = None) -> ServiceRepo:
    """v1 (healthy, tagged good-v1) → v2 (healthy, tagged good-v2) → v3 (broken, running).

    config/app.env changes in v2 (good) and v3 (bad). `when` dates every commit (default: now)."""
    path = root / "shop"
    deploy_dir = root / "deployed"
    path.mkdir()
    deploy_dir.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Release Bot")
    git(path, "config", "user.email", "release@example.invalid")
    repo = ServiceRepo(path, deploy_dir, when=when)
    repo.commit("v1", {"app.txt": "version 1 healthy\n", ".gitignore": "build/\n",
                       "config/app.env": "POOL_SIZE=10\n"}, "Release v1", tag="good-v1")
    repo.commit("v2", {"app.txt": "version 2 healthy\n", "config/app.env": "POOL_SIZE=20\n"}, "Release v2",
                tag="good-v2")
    repo.commit("v3", {"app.txt": "version 3 unhealthy\n", "feature.txt": "new feature\n",
                       "config/app.env": "POOL_SIZE=0\n"}, "Release v3: new feature")
    # What production runs now: v3, deployed.
    (deploy_dir / "current").write_text("version 3 unhealthy\n")
    return repo


BUILD = "mkdir -p build && cp app.txt build/app.txt && cp config/app.env build/app.env"


def deploy_command(deploy_dir: Path) -> str:
    return (f"cp build/app.txt {deploy_dir}/current && git rev-parse HEAD >> {deploy_dir}/deploys.log "
            f"&& echo deployed with token=$DEPLOY_TOKEN")


def reload_command(deploy_dir: Path) -> str:
    return f"cp config/app.env {deploy_dir}/app.env && echo reloaded >> {deploy_dir}/reloads.log"


def save_service_target(name: str, repo: ServiceRepo, health_url: str, *, deploy_token: str, health_token: str,
                        build_command: str, **overrides: object) -> None:
    """Save the `sevflow Service Target` block for this repo and its app, as a person would."""
    from pydantic import SecretStr

    from sevflow.blocks import ServiceTarget

    fields: dict[str, object] = dict(  # no `service`: the block's name is the service's (set it to differ)
        repository=str(repo.path),
        branch="main",
        build_command=build_command,
        deploy_command=deploy_command(repo.deploy_dir),
        reload_command=reload_command(repo.deploy_dir),
        health_check_urls=[health_url],
        health_check_budget_seconds=2.0,
        config_files=["config/app.env"],
        command_secrets={"DEPLOY_TOKEN": SecretStr(deploy_token)},
        health_check_token=SecretStr(health_token),
    )
    fields.update(overrides)
    ServiceTarget(**fields).save(name, overwrite=True)


@dataclass
class RemoteRepo:
    """A service whose repository lives elsewhere: a bare repository (the remote, as a Git
    host keeps it) and a developer's clone of it (to move the remote, as a colleague would)."""

    bare: Path
    work: ServiceRepo

    @property
    def url(self) -> str:
        return self.bare.resolve().as_uri()

    def head(self, branch: str = "main") -> str:
        return git(self.bare, "rev-parse", f"refs/heads/{branch}")

    def refs(self) -> str:
        return git(self.bare, "show-ref")

    def tree(self, ref: str) -> str:
        return git(self.bare, "rev-parse", f"{ref}^{{tree}}")

    def push_commit(self, label: str, files: dict[str, str], message: str) -> str:
        """A colleague's commit, pushed to the remote's main."""
        sha = self.work.commit(label, files, message)
        git(self.work.path, "push", "-q", "origin", "main")
        return sha


def make_remote_repo(root: Path) -> RemoteRepo:
    """`make_service_repo`'s history (v1, v2 good; v3 running), pushed to a bare repository
    under `root/remotes`; the developer's clone stays in `root/shop`."""
    work = make_service_repo(root)
    bare = root / "remotes" / "shop.git"
    bare.parent.mkdir()
    git(root, "clone", "-q", "--bare", str(work.path), str(bare))
    git(work.path, "remote", "add", "origin", str(bare))
    return RemoteRepo(bare, work)
