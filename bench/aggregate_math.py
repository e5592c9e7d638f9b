"""Benchmark of `pygrid.aggregation`: time and peak memory per method, and summation error.

Prints one JSON line of figures. Run: ``.venv/bin/python bench/aggregate_math.py [--params N]``.
Every method runs in its own process so that ``ru_maxrss`` (a high-water mark) is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

DISTINCT_FILES = 8


def _write_diffs(folder: Path, params: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    rows = max(1, params // 1000)
    paths = []
    for index in range(DISTINCT_FILES):
        path = folder / f"diff-{index}.safetensors"
        save_file({"w": torch.randn(rows, 1000, generator=generator) * 1e-3}, path)
        paths.append(path)
    return paths


def _run(method: str, paths: list[str], num_diffs: int, queue: Any) -> None:
    import torch

    from pygrid.aggregation import FileDiff, aggregate, parse_aggregation_config

    extra = {"clip_norm": 1.0, "noise_multiplier": 1.0, "target_epsilon": 1e6}
    config = parse_aggregation_config(
        {"method": method, **(extra if method == "dp_fedavg" else {})}
    )
    shape = FileDiff(paths[0], 1).shape("w")
    params = {"w": torch.zeros(shape)}
    diffs = [FileDiff(paths[i % len(paths)], 1 + i % 5) for i in range(num_diffs)]
    aggregate(config, params, diffs[:2])  # warm-up: imports, allocator, thread pool
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    aggregate(config, params, diffs)
    seconds = time.perf_counter() - started
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    queue.put({"seconds": round(seconds, 3), "peak_growth_mb": round(growth, 1)})


def _summation_error(params: int, num_diffs: int) -> dict[str, float]:
    """Relative error of a float32 and a float64 running mean against an exact (fsum) one."""
    import math

    import torch

    generator = torch.Generator().manual_seed(1)
    diffs = [torch.randn(params, generator=generator) for _ in range(num_diffs)]
    sum32 = torch.zeros(params)
    sum64 = torch.zeros(params, dtype=torch.float64)
    for diff in diffs:
        sum32 += diff
        sum64 += diff
    probe = range(0, params, max(1, params // 2000))
    exact = torch.tensor(
        [math.fsum(float(d[i]) for d in diffs) for i in probe], dtype=torch.float64
    )
    scale = float(exact.abs().mean())
    index = torch.tensor(list(probe))
    return {
        "float32": float((sum32.double()[index] - exact).abs().mean()) / scale,
        "float64": float((sum64[index] - exact).abs().mean()) / scale,
    }


def main() -> None:
    """Time every method over FileDiffs and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--diffs", type=int, default=200)
    parser.add_argument("--robust-diffs", type=int, default=50)
    args = parser.parse_args()
    figures: dict[str, Any] = {"params": args.params, "model_mb": args.params * 4 / 2**20}
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        paths = [str(path) for path in _write_diffs(Path(folder), args.params)]
        for method in ("fedavg", "fedadam", "median", "trimmed_mean", "dp_fedavg"):
            count = args.robust_diffs if method in ("median", "trimmed_mean") else args.diffs
            queue = context.Queue()
            process = context.Process(target=_run, args=(method, paths, count, queue))
            process.start()
            figures[method] = {"diffs": count, **queue.get(timeout=600)}
            process.join()
    figures["relative_error_1000_diffs"] = _summation_error(100_000, 1000)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
