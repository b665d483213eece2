"""The machine a figure was measured on: every latency and throughput is recorded with it."""

import os
import platform
from pathlib import Path


def cpu_flags() -> dict:
    """The first processor's model name and the int8 instruction sets among its flags."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first = (line.split(":", 1) for line in text.split("\n\n", 1)[0].splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in first}
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor(),
        "cores": os.cpu_count(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx": "amx_int8" in flags,
    }
