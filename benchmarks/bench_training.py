"""Training throughput (images per second) and peak memory of the auxiliary stage on this machine.

Times ``visualad_med.training.loop.train_step`` (forward, the three losses, backward
through the frozen blocks into the tokens, AdamW step) on random batches, fp32
and bf16 autocast, best of ``--steps`` after one warm-up step. Peak memory is
the process's maximum resident set size (``resource.getrusage``), which
includes the Python interpreter and the frozen backbone.

    python benchmarks/bench_training.py [--backbone dinov2-s14] [--image-size 224] [--batch 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from visualad_med import build_model
from visualad_med.training.loop import TrainConfig, make_optimizer, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dinov2-s14")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    model = build_model(args.backbone, image_size=args.image_size).train()
    size = model.image_size
    images = torch.randn(args.batch, 3, size, size)
    masks = (torch.rand(args.batch, size, size) > 0.9).float()
    labels = torch.randint(0, 2, (args.batch,))
    print(f"{args.backbone} at {size} px, batch {args.batch}, {torch.get_num_threads()} threads")
    for precision in ("fp32", "bf16"):
        config = TrainConfig(precision=precision)
        optimizer = make_optimizer(model, config)
        train_step(model, images, masks, labels, optimizer, config, cpu)
        best = float("inf")
        for _ in range(args.steps):
            start = time.perf_counter()
            train_step(model, images, masks, labels, optimizer, config, cpu)
            best = min(best, time.perf_counter() - start)
        print(f"{precision}: {best:.2f} s/step, {args.batch / best:.2f} images/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
