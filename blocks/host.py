"""The host target block: one machine the Memory/Disk Full procedure may free space or memory on."""

from __future__ import annotations

import os

from prefect.blocks.core import Block
from pydantic import Field

from sevflow.blocks.common import block_names, load_named
from sevflow.errors import ConfigurationError
from sevflow.models import CacheCommandSpec, HostSpec


class HostTarget(Block):
    """A host: what to measure, what may be cleared, which temp folders may be cleaned and
    which processes may be stopped. The `memory-disk-full` procedure loads it by name (its
    `host` parameter) and runs on that host (a worker started there): it refuses to act when
    the machine it runs on has another name.

    Nothing here is secret: the procedure reads the local filesystem and /proc, runs the
    configured cache commands as the worker's user, and talks to the Prefect API it runs under.
    """

    _block_type_name = "sevflow Host Target"
    _block_type_slug = "sevflow-host-target"
    _description = "A host Memory/Disk Full may act on: filesystems, caches, temp allow-list, killable processes."

    host: str = Field(description="The machine's name as `hostname` prints it; the run refuses any other.")
    filesystems: list[str] = Field(default_factory=lambda: ["/"],
                                   description="Mount points whose usage is reported (and alerted on).")
    scan_roots: list[str] = Field(default_factory=list,
                                  description="Folders searched for the largest directories and files (one filesystem each).")
    top_n: int = Field(default=10, ge=1, le=200, description="How many largest directories, files and processes to report.")
    growth_window_seconds: float = Field(default=86400.0, gt=0,
                                         description="'Recent growth': bytes in files modified within this window.")
    cache_folders: list[str] = Field(default_factory=list,
                                     description="Folders whose files are caches: clearing deletes every file in them.")
    cache_commands: list[CacheCommandSpec] = Field(
        default_factory=list, description="Commands that clear a cache (e.g. `apt-get clean`) with the folder each empties.")
    temp_allow_list: list[str] = Field(
        default_factory=list, description="The only folders temp files are deleted from (never outside, no symlink followed).")
    temp_min_age_seconds: float = Field(default=86400.0, ge=0,
                                        description="A temp file is deleted only if unmodified for this long.")
    disk_threshold_percent: float = Field(default=90.0, gt=0, le=100, description="A filesystem this full is 'full'.")
    memory_threshold_percent: float = Field(default=90.0, gt=0, le=100, description="Memory this used is 'full'.")
    kill_candidates: list[str] = Field(
        default_factory=list, description="Globs over a process's command line; only matching processes may be killed.")
    kill_min_rss_bytes: int = Field(default=256 * 1024 * 1024, ge=0,
                                    description="A process smaller than this is never proposed for killing.")
    kill_grace_seconds: float = Field(default=10.0, ge=0, description="Between SIGTERM and SIGKILL.")
    leak_window_seconds: float = Field(default=3.0, gt=0, description="How long memory is sampled (leak or legitimate).")
    leak_samples: int = Field(default=6, ge=2, le=100, description="Samples taken over that window.")
    leak_min_growth_bytes: int = Field(default=1024 * 1024, ge=0,
                                       description="Steady growth above this over the window reads as a leak.")
    cleanup_interval_seconds: float = Field(default=3600.0, gt=0,
                                            description="How often the scheduled cleanup check runs (prevention).")
    prometheus_rules_dir: str | None = Field(
        default=None, description="Folder Prometheus loads rule files from; empty for no rule file.")

    def spec(self, block_name: str | None = None) -> HostSpec:
        """Every field, as a run reads it: what a plan is made from."""
        fields = self.model_dump(mode="json")
        fields = {k: v for k, v in fields.items() if k in HostSpec.model_fields}
        return HostSpec(**fields, block=block_name or getattr(self, "_block_document_name", None) or self.host)

    @classmethod
    def for_host(cls, name: str) -> HostTarget:
        """Load the target named `name`, or say which exist."""
        return load_named(cls, name, what="host target", known_as="hosts")


def known_hosts() -> list[str]:
    return block_names(HostTarget)


def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
