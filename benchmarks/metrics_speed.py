"""Time and peak memory of our AUROC / AP / F1-max against scikit-learn's, image and voxel scale.

Run as ``python benchmarks/metrics_speed.py [--sizes 1000 5000000 30000000]``. For each size
and each contender, a fresh child process draws the scores (float32, rounded through float16
as the saved maps are, so ties are common; 1 % positives, 20 % below 1e5 scores) and times
the call; generation is not timed. Peak memory is ``tracemalloc``'s peak above the inputs
during one more call (numpy reports its buffers to it). Contenders:

- ``ours: image_metrics`` -- AUROC, AP and F1-max from one sort (:mod:`visualad_med.evaluation.metrics`);
- ``sklearn: all three`` -- ``roc_auc_score``, ``average_precision_score`` and the largest F1
  over ``precision_recall_curve``;
- ``ours: auroc`` and ``sklearn: roc_auc_score`` -- AUROC alone, as the per-scan body AUROC calls it.

Times are the best of ``--repeats`` calls (default: 20 below 1e5 scores, else 1).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from visualad_med.evaluation.metrics import auroc, image_metrics


def scores_and_labels(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(size,) float32 scores rounded through float16 and (size,) bool labels, positives scoring higher."""
    rng = np.random.default_rng(seed)
    share = 0.2 if size < 100_000 else 0.01
    labels = rng.random(size) < share
    scores = rng.standard_normal(size, dtype=np.float32)
    scores += np.float32(1.5) * labels
    return scores.astype(np.float16).astype(np.float32), labels


def sklearn_three(scores: np.ndarray, labels: np.ndarray) -> tuple[float, ...]:
    """AUROC, AP and F1-max as scikit-learn computes them."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = float(np.nanmax(2 * precision * recall / (precision + recall)))
    return roc_auc_score(labels, scores), average_precision_score(labels, scores), f1


CONTENDERS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[float, ...]]] = {
    "ours: image_metrics": lambda s, y: tuple(image_metrics(s, y).values()),
    "sklearn: all three": sklearn_three,
    "ours: auroc": lambda s, y: (auroc(s, y),),
    "sklearn: roc_auc_score": lambda s, y: (roc_auc_score(y, s),),
}


def run_case(name: str, size: int, repeats: int) -> dict:
    """Time ``CONTENDERS[name]`` on ``size`` scores.

    Returns:
        ``seconds``: best of ``repeats`` untraced calls; ``peak_bytes``: tracemalloc's peak above the
        inputs during one more call; ``values``: what that call returned.
    """
    scores, labels = scores_and_labels(size)
    function = CONTENDERS[name]
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        function(scores, labels)
        best = min(best, time.perf_counter() - tic)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    values = function(scores, labels)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {"seconds": best, "peak_bytes": peak, "values": [float(v) for v in values]}


def _size(count: float) -> str:
    """``count`` bytes in KiB below 1 MiB, else in MiB."""
    return f"{count / 2**10:,.0f} KiB" if count < 2**20 else f"{count / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5_000_000, 30_000_000])
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    print("| scores | contender | time | peak memory above inputs | AUROC, AP, F1-max |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        repeats = args.repeats or (20 if size < 100_000 else 1)
        for name in CONTENDERS:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                result = pool.submit(run_case, name, size, repeats).result()
            values = ", ".join(f"{v:.9f}" for v in result["values"])
            print(f"| {size:,} | {name} | {result['seconds'] * 1e3:,.1f} ms | "
                  f"{_size(result['peak_bytes'])} | {values} |", flush=True)


if __name__ == "__main__":
    main()
