"""Benchmarks: `make bench` (bench/run.py), the GPU check, the Dask teacher stage and data scale."""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save_results(name: str, results: dict, table: str, out: Path = RESULTS) -> None:
    """Write `out/<name>.json` and `out/<name>.md`, and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    (out / f"{name}.md").write_text(table)
    print(table)
