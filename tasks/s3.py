"""Backups in S3 (through prefect-aws's `S3Bucket` and `AwsCredentials` blocks) and in a local
folder: list them newest first, put a new one without ever overwriting, fetch one.

A backup is a `pg_dump -Fc` archive `<name>.dump` with its sha256 beside it: an object (or
file) `<name>.dump.sha256` holding the hex digest (as `sha256sum` writes it), and, in S3, the
object metadata `sha256` and `taken-at` (ISO 8601). When it was taken: `taken-at`, else the
object's LastModified (the file's mtime locally).
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from prefect_aws.s3 import S3Bucket

from sevflow.errors import ConfigurationError, DriftError
from sevflow.models import BackupRef, DatabaseSpec

SUFFIX = ".dump"


def _bucket(block: str) -> S3Bucket:
    try:
        return S3Bucket.load(block)  # type: ignore[return-value]
    except ValueError as exc:
        raise ConfigurationError(f"No S3 Bucket block named {block!r} (prefect-aws): create it, or fix "
                                 "s3_bucket_block in the database target block.") from exc


def _client(bucket: S3Bucket) -> Any:
    return bucket.credentials.get_s3_client()


def _prefix(bucket: S3Bucket, spec_prefix: str) -> str:
    parts = [p.strip("/") for p in (bucket.bucket_folder, spec_prefix) if p and p.strip("/")]
    return "/".join(parts) + "/" if parts else ""


def _exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def _s3_backups(spec: DatabaseSpec) -> list[BackupRef]:
    assert spec.s3_bucket_block
    bucket = _bucket(spec.s3_bucket_block)
    client = _client(bucket)
    prefix = _prefix(bucket, spec.backup_prefix)
    found: list[BackupRef] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket_name, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith(SUFFIX):
                continue
            head = client.head_object(Bucket=bucket.bucket_name, Key=key)
            meta = head.get("Metadata", {})
            sha = meta.get("sha256", "")
            try:
                sidecar = client.get_object(Bucket=bucket.bucket_name, Key=key + ".sha256")["Body"].read().decode()
                sha = sidecar.split()[0] if sidecar.strip() else sha  # the sidecar is the record a person edits
            except ClientError:
                pass
            taken = meta.get("taken-at")
            found.append(BackupRef(location="s3", key=key, bucket_block=spec.s3_bucket_block, sha256=sha,
                                   taken_at=datetime.fromisoformat(taken) if taken else obj["LastModified"],
                                   size=obj["Size"]))
    return found


def _local_backups(spec: DatabaseSpec) -> list[BackupRef]:
    assert spec.local_backup_dir
    folder = Path(spec.local_backup_dir).expanduser()
    found = []
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        sidecar = path.with_name(path.name + ".sha256")
        sha = sidecar.read_text().split()[0] if sidecar.exists() and sidecar.read_text().strip() else ""
        found.append(BackupRef(location="local", key=str(path), sha256=sha, size=path.stat().st_size,
                               taken_at=datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)))
    return found


def find_backups_now(spec: DatabaseSpec) -> list[BackupRef]:
    """Every backup in the S3 prefix and the local folder, newest first."""
    found: list[BackupRef] = []
    if spec.s3_bucket_block:
        found += _s3_backups(spec)
    if spec.local_backup_dir:
        found += _local_backups(spec)
    return sorted(found, key=lambda b: b.taken_at, reverse=True)


def put_new_backup(spec: DatabaseSpec, path: Path, name: str, sha256: str, taken_at: datetime) -> BackupRef:
    """Upload `path` as `<prefix>/<name>` with its sha256 (metadata and sidecar). Never
    overwrites: an existing key with the same sha256 is this upload made before (returned), any
    other existing key stops it."""
    assert spec.s3_bucket_block
    bucket = _bucket(spec.s3_bucket_block)
    client = _client(bucket)
    key = _prefix(bucket, spec.backup_prefix) + name
    ref = BackupRef(location="s3", key=key, bucket_block=spec.s3_bucket_block, sha256=sha256, taken_at=taken_at,
                    size=path.stat().st_size)
    if _exists(client, bucket.bucket_name, key):
        head = client.head_object(Bucket=bucket.bucket_name, Key=key)
        if head.get("Metadata", {}).get("sha256") == sha256:
            return ref
        raise DriftError(f"s3 key {key} exists already with other content: not overwritten.")
    for sidecar_key in (key + ".sha256",):
        if _exists(client, bucket.bucket_name, sidecar_key):
            raise DriftError(f"s3 key {sidecar_key} exists already: not overwritten.")
    metadata = {"sha256": sha256, "taken-at": taken_at.isoformat(), "database": spec.database}
    client.upload_file(str(path), bucket.bucket_name, key, ExtraArgs={"Metadata": metadata})
    client.put_object(Bucket=bucket.bucket_name, Key=key + ".sha256", Body=f"{sha256}  {name}\n".encode())
    return ref


def keep_local_backup(spec: DatabaseSpec, path: Path, name: str, sha256: str, taken_at: datetime) -> BackupRef:
    """Copy `path` into the local backup folder with its sidecar; never overwrites."""
    assert spec.local_backup_dir
    folder = Path(spec.local_backup_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    if dest.exists():
        raise DriftError(f"{dest} exists already: not overwritten.")
    shutil.copyfile(path, dest)
    dest.with_name(name + ".sha256").write_text(f"{sha256}  {name}\n")
    return BackupRef(location="local", key=str(dest), sha256=sha256, taken_at=taken_at, size=dest.stat().st_size)


def fetch_backup(backup: BackupRef, folder: Path) -> Path:
    """The backup's archive as a file: downloaded into `folder`, or the local file itself."""
    if backup.location == "local":
        return Path(backup.key)  # read in place: only read, checked by its sha256 before use
    dest = folder / backup.key.rsplit("/", 1)[-1]
    assert backup.bucket_block
    bucket = _bucket(backup.bucket_block)
    _client(bucket).download_file(bucket.bucket_name, backup.key, str(dest))
    return dest


from sevflow.tasks.common import step  # noqa: E402


@step("list the backups")
def find_backups(spec: DatabaseSpec) -> list[BackupRef]:
    """Read-only: the backups of the database (S3 prefix and local folder), newest first."""
    return find_backups_now(spec)


def export_text(block: str, prefix: str, name: str, text: str) -> str:
    """Write `text` as `<bucket folder>/<prefix>/<name>` in the bucket of the S3 Bucket block
    `block` (a re-export replaces the earlier copy of the same name). Returns its s3:// address."""
    try:
        bucket: S3Bucket = S3Bucket.load(block)  # type: ignore[assignment]
    except ValueError as exc:
        raise ConfigurationError(f"No S3 Bucket block named {block!r} (prefect-aws): create it in the Prefect UI "
                                 "(Blocks), or name another with --export-s3.") from exc
    key = _prefix(bucket, prefix) + name
    try:
        _client(bucket).put_object(Bucket=bucket.bucket_name, Key=key, Body=text.encode(),
                                   ContentType="text/markdown; charset=utf-8")
    except ClientError as exc:
        raise ConfigurationError(f"Could not write s3://{bucket.bucket_name}/{key}: "
                                 f"{exc.response.get('Error', {}).get('Code', exc)}") from exc
    return f"s3://{bucket.bucket_name}/{key}"
