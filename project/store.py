"""The S3 artifact store: published model versions, each verified object by object.

Layout under the bucket: ``models/<name>/<version>/<files>`` with ``manifest.json`` written
last, and ``models/<name>/latest.json`` (the version users get, and every move of it) moved only after the
manifest is in place, by a conditional write, so that of two writers one wins. Endpoint and
credentials come from the standard AWS settings (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL), so the same code serves AWS S3, MinIO and SeaweedFS.
"""

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distillery.errors import DistilleryError
from distillery.files import atomic_dir, atomic_file, file_digest
from project.config import SAFE_NAME

NAME = re.compile(SAFE_NAME)
UNFINISHED = "unfinished.json"  # in a version's folder until its manifest is written: which run it holds


def check_name(kind: str, value: str) -> str:
    """Names become S3 keys and local paths: letters, digits, '.', '_', '-' only, no '..'."""
    if not NAME.match(value) or ".." in value:
        raise DistilleryError(f"Invalid {kind} {value!r}: use letters, digits, '.', '_' and '-' (no '..').")
    return value


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    endpoint_url: str | None

    configured: bool = True

    @classmethod
    def from_env(cls) -> "S3Settings":
        """DISTILLERY_BUCKET names the bucket; setting it (or an endpoint) turns publishing on."""
        bucket = os.environ.get("DISTILLERY_BUCKET")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return cls(bucket or "distillery", endpoint, configured=bool(bucket or endpoint))

    def where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"

    def url(self, key: str) -> str:
        """The object's address (path style on a custom endpoint, virtual-host style on AWS)."""
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{self.bucket}/{key}"
        return f"https://{self.bucket}.s3.amazonaws.com/{key}"


def version_prefix(name: str, version: str) -> str:
    return f"models/{check_name('model name', name)}/{check_name('version', version)}"


def manifest_key(name: str, version: str) -> str:
    return f"{version_prefix(name, version)}/manifest.json"


def pointer_key(name: str) -> str:
    return f"models/{check_name('model name', name)}/latest.json"


def error_code(error: DistilleryError) -> str | None:
    """The S3 error code behind a failed call, e.g. NoSuchKey."""
    from botocore.exceptions import ClientError

    cause = error.__cause__
    return cause.response.get("Error", {}).get("Code") if isinstance(cause, ClientError) else None


def max_attempts() -> int:
    """Tries per S3 call, with backoff between them: the standard AWS_MAX_ATTEMPTS, 5 by default."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "5")
    if not value.isdigit() or int(value) < 1:
        raise DistilleryError(f"AWS_MAX_ATTEMPTS must be a whole number of at least 1, got {value!r}.")
    return int(value)


class ArtifactStore:
    def __init__(self, settings: S3Settings):
        import boto3
        from botocore.config import Config

        self.settings = settings
        session = boto3.session.Session()  # reads the environment now, not when boto3 was first used
        self.client = session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            config=Config(
                retries={"max_attempts": max_attempts(), "mode": "standard"}, connect_timeout=5, read_timeout=60
            ),
        )

    def call(self, operation: str, **kwargs):
        """One S3 call; failures become a DistilleryError naming the endpoint and bucket, never a secret."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.settings.bucket, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "?")
            hint = {
                "SignatureDoesNotMatch": "the secret key is wrong",
                "InvalidAccessKeyId": "the access key is unknown",
                "NoSuchBucket": "the bucket does not exist",
                "AccessDenied": "these credentials may not do this",
            }.get(code, "see the error code")
            raise DistilleryError(f"S3 refused {operation} on {self.settings.where()}: {code} ({hint}).") from e
        except BotoCoreError as e:
            raise DistilleryError(f"S3 {operation} on {self.settings.where()} failed: {e}") from e

    def upload_verified(self, path: Path, key: str) -> str:
        """Upload a file with `put_verified`. Returns its sha256 (hex)."""
        digest = file_digest(path)
        with path.open("rb") as body:
            self.put_verified(key, body, size=path.stat().st_size, digest=digest)
        return digest

    def put_verified(self, key: str, body, *, size: int, digest: str, **extra) -> None:
        """PUT with a SHA-256 checksum (`digest`, hex) the server checks, then `verify` what it stored."""
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        self.call("put_object", Key=key, Body=body, ChecksumSHA256=checksum, **extra)
        self.verify(key, size=size, digest=digest)

    def verify(self, key: str, *, size: int, digest: str) -> None:
        """The object at `key` has `size` bytes and SHA-256 `digest` (hex), as the server reports it; a server
        that reports no checksum (not every S3 does) gets the object read back and hashed here."""
        head = self.call("head_object", Key=key, ChecksumMode="ENABLED")
        reported = head.get("ChecksumSHA256")
        stored = base64.b64decode(reported).hex() if reported else self.object_digest(key)
        if head["ContentLength"] != size or stored != digest:
            raise DistilleryError(
                f"Upload to {key} on {self.settings.where()} did not verify: the stored object's size or SHA-256 "
                "differs from what was sent."
            )

    def object_digest(self, key: str) -> str:
        """SHA-256 (hex) of an object as read back from the store."""
        sha = hashlib.sha256()
        for chunk in self.call("get_object", Key=key)["Body"].iter_chunks(1 << 20):
            sha.update(chunk)
        return sha.hexdigest()

    def upload_version(self, name: str, version: str, files: dict[str, Path], run_id: str) -> list[dict]:
        """Upload every file (verified) of a new version and return their manifest entries; or, where an
        interrupted publish of the same run wrote its manifest already, that manifest's entries. Until
        `finish`, a marker names the run being published, so that a rerun of that run finishes this version."""
        prefix = version_prefix(name, version)
        marker = f"{prefix}/{UNFINISHED}"
        manifest = self.manifest_or_none(name, version)
        if manifest is not None:
            if (self.json_or_none(marker) or {}).get("run") != run_id:
                raise DistilleryError(f"Version {version} of {name} is already published on {self.settings.where()}.")
            return manifest["files"]
        self.put_json(marker, {"run": run_id})
        return [
            {
                "path": relative,
                "size": path.stat().st_size,
                "sha256": self.upload_verified(path, f"{prefix}/{check_relative(relative)}"),
            }
            for relative, path in sorted(files.items())
        ]

    def finish(self, name: str, version: str) -> None:
        """The version is complete: its marker goes."""
        self.call("delete_object", Key=f"{version_prefix(name, version)}/{UNFINISHED}")

    def pointer(self, name: str) -> tuple[dict | None, str | None]:
        """`latest.json` and its ETag, for `move_pointer`; (None, None) before any version was promoted."""
        try:
            response = self.call("get_object", Key=pointer_key(name))
        except DistilleryError as e:
            if error_code(e) in ("NoSuchKey", "404"):
                return None, None
            raise
        return json.loads(response["Body"].read()), response["ETag"]

    def move_pointer(self, name: str, pointer: dict, *, etag: str | None) -> bool:
        """Write `pointer` as `latest.json` only if it is still the one read with `etag` (None: there was none).
        False where another writer moved it in between: nothing was written."""
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.put_json(pointer_key(name), pointer, **condition)
        except DistilleryError as e:
            if error_code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def unfinished_version(self, name: str, run_id: str) -> str | None:
        """The version an interrupted publish of the same run started: its marker is still there."""
        prefix = f"models/{check_name('model name', name)}/"
        for key in self.keys(prefix):
            if key.endswith(f"/{UNFINISHED}") and (self.json_or_none(key) or {}).get("run") == run_id:
                return key[len(prefix) : -len(UNFINISHED) - 1]
        return None

    def put_json(self, key: str, data: dict, **condition) -> None:
        """PUT a JSON document, verified like every upload; `condition`: IfMatch or IfNoneMatch."""
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        digest = hashlib.sha256(body).hexdigest()
        self.put_verified(key, body, size=len(body), digest=digest, ContentType="application/json", **condition)

    def get_json(self, key: str) -> dict:
        return json.loads(self.call("get_object", Key=key)["Body"].read())

    def manifest_or_none(self, name: str, version: str) -> dict | None:
        return self.json_or_none(manifest_key(name, version))

    def json_or_none(self, key: str) -> dict | None:
        """The JSON document at `key`, or None where there is none."""
        try:
            return self.get_json(key)
        except DistilleryError as e:
            if error_code(e) in ("NoSuchKey", "404"):
                return None
            raise

    def keys(self, prefix: str) -> Iterator[str]:
        """Every object key under `prefix`, page by page."""
        token = {}
        while True:
            page = self.call("list_objects_v2", Prefix=prefix, **token)
            yield from (o["Key"] for o in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def versions(self, name: str) -> list[str]:
        """Complete versions only: those whose manifest exists."""
        prefix = f"models/{check_name('model name', name)}/"
        manifest = "/manifest.json"
        return sorted(key[len(prefix) : -len(manifest)] for key in self.keys(prefix) if key.endswith(manifest))

    def latest(self, name: str) -> str:
        """The version users get; a DistilleryError where none was promoted."""
        pointer, _ = self.pointer(name)
        if pointer is None:
            raise DistilleryError(
                f"{name} has no promoted version on {self.settings.where()}: `distillery models list {name}` lists "
                "what is published."
            )
        return pointer["version"]

    def manifest(self, name: str, version: str) -> dict:
        """The manifest of a published version; a DistilleryError where there is none."""
        manifest = self.manifest_or_none(name, version)
        if manifest is None:
            raise DistilleryError(f"{name} version {version} is not published on {self.settings.where()}.")
        return manifest

    def entry(self, name: str, version: str, path: str) -> dict:
        """The manifest's record (path, size, sha256) of one file of a published version."""
        found = [e for e in self.manifest(name, version)["files"] if e["path"] == path]
        if not found:
            raise DistilleryError(
                f"{name} version {version} on {self.settings.where()} has no {path}: it was published before "
                "Distillery made one. Publish a run again (`distillery publish`), or use `distillery models download`."
            )
        return found[0]

    def read_verified(self, name: str, version: str, path: str) -> bytes:
        """One file of a published version, checked against its manifest sha256."""
        entry = self.entry(name, version, path)
        body = self.call("get_object", Key=f"{version_prefix(name, version)}/{check_relative(path)}")["Body"].read()
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            raise DistilleryError(f"{path} of {name} {version} does not match its manifest sha256.")
        return body

    def fetch_verified(self, name: str, version: str, entry: dict, target: Path) -> None:
        """Download the file of a version's manifest `entry` to `target` and check it against the entry's sha256."""
        key = f"{version_prefix(name, version)}/{check_relative(entry['path'])}"
        self.call("download_file", Key=key, Filename=str(target))
        if file_digest(target) != entry["sha256"]:
            raise DistilleryError(f"{entry['path']} of {name} {version} does not match its manifest sha256.")

    def download_file(self, name: str, version: str, path: str, dest: Path) -> str:
        """One file of a published version into `dest` (written whole or not at all), checked against its
        manifest sha256, which it returns."""
        entry = self.entry(name, version, path)
        with atomic_file(dest) as tmp:
            self.fetch_verified(name, version, entry, tmp)
        return entry["sha256"]

    def download(self, name: str, version: str, dest: Path) -> dict:
        """Fetch every file of a version into `dest`, verifying each against the manifest's sha256."""
        manifest = self.manifest(name, version)
        with atomic_dir(dest) as out:
            for entry in manifest["files"]:
                target = out / check_relative(entry["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fetch_verified(name, version, entry, target)
            (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return manifest


def check_relative(path: str) -> str:
    """A manifest path must stay inside the download folder."""
    parts = Path(path).parts
    if Path(path).is_absolute() or ".." in parts or not parts:
        raise DistilleryError(f"Manifest path {path!r} escapes the download folder.")
    return path
