"""`make up` / `make down`: the local stack on 127.0.0.1 — SeaweedFS S3 and a Prefect server + UI.

State (data, logs, pids, generated credentials) lives in .distillery/stack/, which git ignores.
`stack.env` there holds the settings that point Distillery at the stack; `distillery run` reads
it while the stack is up.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from infra import s3_server

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("DISTILLERY_STACK_DIR", ROOT / ".distillery" / "stack"))
BUCKET = "distillery"
S3_PORT = int(os.environ.get("DISTILLERY_S3_PORT", "8333"))
PREFECT_PORT = int(os.environ.get("DISTILLERY_PREFECT_PORT", "4200"))


def pid_alive(pid_file: Path) -> int | None:
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def start_prefect() -> None:
    home = STATE / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    with (STATE / "prefect.log").open("ab") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(PREFECT_PORT),
            ],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    (STATE / "prefect.pid").write_text(str(process.pid))
    wait_for(f"http://127.0.0.1:{PREFECT_PORT}/api/health", 90)


def write_env(credentials: s3_server.Credentials) -> Path:
    path = STATE / "stack.env"
    lines = [
        f"AWS_ACCESS_KEY_ID={credentials.access_key}",
        f"AWS_SECRET_ACCESS_KEY={credentials.secret_key}",
        f"AWS_ENDPOINT_URL_S3=http://127.0.0.1:{S3_PORT}",
        "AWS_DEFAULT_REGION=us-east-1",
        f"DISTILLERY_BUCKET={BUCKET}",
        f"PREFECT_API_URL=http://127.0.0.1:{PREFECT_PORT}/api",
    ]
    s3_server.write_private(path, "\n".join(lines) + "\n")
    return path


def up() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if not pid_alive(STATE / "s3.pid"):
        process, credentials = s3_server.start(STATE / "s3", BUCKET, S3_PORT)
        (STATE / "s3.pid").write_text(str(process.pid))
    else:
        credentials = s3_server.Credentials.load_or_create(STATE / "s3" / "identities.json")
    if not pid_alive(STATE / "prefect.pid"):
        start_prefect()
    env_file = write_env(credentials)
    print(
        f"Stack up in {time.monotonic() - started:.1f} s (127.0.0.1 only):\n"
        f"  S3 (SeaweedFS)  http://127.0.0.1:{S3_PORT}  bucket '{BUCKET}'\n"
        f"  Prefect UI      http://127.0.0.1:{PREFECT_PORT}\n"
        f"  Credentials and settings: {env_file} (mode 0600; `set -a; . {env_file}` to use them in a shell)"
    )


def down() -> None:
    for name in ("prefect", "s3"):  # Prefect first: it may still be writing to S3
        pid_file = STATE / f"{name}.pid"
        pid = pid_alive(pid_file)
        if pid:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(60):
                if not pid_alive(pid_file):
                    break
                time.sleep(0.25)
            print(f"stopped {name} (pid {pid})")
        pid_file.unlink(missing_ok=True)
    (STATE / "stack.env").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    {"up": up, "down": down}[parser.parse_args().command]()


if __name__ == "__main__":
    main()
