"""Time and peak memory of the streaming pixel metrics.

Run as ``python benchmarks/bench_metrics.py``. Two cases, each in a fresh
child process so that its peak memory is its own:

- pixel metrics over 1e8 pixels: 400 maps of 500x500;
- AUPRO over 200 maps of 518x518 with blob masks.

Maps are generated batch by batch and fed to ``PixelMetricAccumulator``, as
the evaluation loop does; generation is not timed. Peak memory is the child's
peak resident set size from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(whole process: interpreter, numpy, scipy, one generated batch and the
accumulator), printed next to the same figure taken just before the first
update.
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from visualad_med.evaluation.pixel_metrics import PixelMetricAccumulator


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: KiB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batch(rng: np.random.Generator, batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (B, H, W) float32 maps and bool masks; half the images hold 1-3 discs."""
    yy, xx = np.ogrid[:size, :size]
    masks = np.zeros((batch, size, size), dtype=bool)
    for mask in masks[: batch // 2]:
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            radius = rng.integers(size // 50, size // 8)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    maps = rng.random((batch, size, size), dtype=np.float32)
    maps += np.float32(0.5) * masks
    return maps, masks


def run_case(n_maps: int, size: int, batch: int = 8, seed: int = 0) -> dict[str, float]:
    """Feed ``n_maps`` maps of ``size`` x ``size`` pixels and compute the metrics.

    Returns:
        Timings (s), memory (MiB), pixel counts and the metric values.
    """
    rng = np.random.default_rng(seed)
    accumulator = PixelMetricAccumulator()
    baseline = _peak_rss_mib()
    update_s = 0.0
    anomalous = 0
    for start in range(0, n_maps, batch):
        maps, masks = _batch(rng, min(batch, n_maps - start), size)
        anomalous += int(masks.sum())
        tic = time.perf_counter()
        accumulator.update(maps, masks)
        update_s += time.perf_counter() - tic
    tic = time.perf_counter()
    metrics = accumulator.compute()
    compute_s = time.perf_counter() - tic
    return {
        "pixels": n_maps * size * size,
        "anomalous_pixels": anomalous,
        "update_s": update_s,
        "compute_s": compute_s,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": _peak_rss_mib(),
        **metrics,
    }


def _report(name: str, result: dict[str, float]) -> None:
    """Print one case."""
    total = result["update_s"] + result["compute_s"]
    print(f"{name}")
    print(f"  pixels: {result['pixels']:,} ({result['anomalous_pixels'] / result['pixels']:.1%} anomalous)")
    print(f"  time: {total:.2f} s (update {result['update_s']:.2f} s, compute {result['compute_s']:.2f} s)")
    print(
        f"  peak RSS (ru_maxrss): {result['peak_rss_mib']:.0f} MiB "
        f"(before first update: {result['baseline_rss_mib']:.0f} MiB)"
    )
    values = ", ".join(f"{key}={result[key]:.4f}" for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"))
    print(f"  {values}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the map counts to run (smoke tests)")
    args = parser.parse_args()
    for name, n_maps, size in (("pixel metrics", 400, 500), ("AUPRO", 200, 518)):
        n_maps = max(1, round(n_maps * args.scale))
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            _report(f"{name}, {n_maps} maps of {size}x{size}", pool.submit(run_case, n_maps, size).result())


if __name__ == "__main__":
    main()
