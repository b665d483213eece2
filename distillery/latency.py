"""onnxruntime latency of an ONNX model, timed in a Python process of its own.

In a process that has trained with torch, torch's worker threads competed with onnxruntime's
for the cores: on this 2-core machine an 8k-parameter student's batch-1 latency came out 1.3-2.5x
slower, at random, enough to flip the choice between the fp32 and the int8 model. A fresh
process that loads only numpy and onnxruntime times every model under the same conditions.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from distillery.errors import DistilleryError


def measure(path: Path, sample: np.ndarray, batches: tuple[int, ...] = (1, 256), budget_s: float = 1.0,
            threads: int = 0) -> dict[str, float]:
    """Median milliseconds of one run per batch size, as {"b1": ..., "b256": ...}; `sample` supplies the
    images (repeated up to the batch size)."""
    with tempfile.TemporaryDirectory() as tmp:
        sample_file = Path(tmp) / "sample.npy"
        np.save(sample_file, np.ascontiguousarray(sample[: max(batches)], dtype=np.float32))
        done = subprocess.run([sys.executable, "-m", "distillery.latency", str(path), str(sample_file),
                               "--batches", *map(str, batches), "--budget-s", str(budget_s),
                               "--threads", str(threads)], capture_output=True, text=True)
    if done.returncode != 0:
        raise DistilleryError(f"Timing {path} in onnxruntime failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def latency_ms(sess, sample: np.ndarray, batch: int, budget_s: float, max_runs: int = 200) -> float:
    """Median wall time of one `sess.run` on `batch` images, after a warm-up."""
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])))
    for _ in range(3):
        sess.run(None, {name: x})
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(prog="python -m distillery.latency", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("sample", type=Path, help=".npy array of input images")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--budget-s", type=float, default=1.0, help="timing budget per batch size")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    sample = np.load(args.sample)
    print(json.dumps({f"b{b}": latency_ms(sess, sample, b, args.budget_s) for b in args.batches}))


if __name__ == "__main__":
    main()
