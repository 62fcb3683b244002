"""Images per second of the full VisualAD model against the bare frozen backbone.

Both run the same architecture on the same batch in eval mode under
``torch.inference_mode``; the full model includes SCA, SAF, upsampling,
smoothing and scoring. Random weights (speed does not depend on them).

    python benchmarks/bench_model.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from visualad_med import build_model

CASES = [
    ("ViT-B/16 @ 224", "vit_base_patch16_clip_quickgelu_224", 224, (3, 6, 9, 12)),
    ("ViT-S/14 @ 448", "vit_small_patch14_dinov2", 448, (3, 6, 9, 12)),
]


def images_per_second(run, images: torch.Tensor, repeats: int) -> float:
    """Best-of-``repeats`` throughput after one warm-up call."""
    with torch.inference_mode():
        run(images)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run(images)
            best = min(best, time.perf_counter() - start)
    return images.shape[0] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    for label, name, size, taps in CASES:
        bare = timm.create_model(name, pretrained=False, num_classes=0, img_size=size).eval()
        model = build_model(name, backbone_weights="random", image_size=size, taps=taps).eval()
        images = torch.randn(args.batch, 3, size, size)
        bare_speed = images_per_second(bare.forward_features, images, args.repeats)
        full_speed = images_per_second(model, images, args.repeats)
        print(f"{label}: full model {full_speed:.2f} img/s, bare backbone {bare_speed:.2f} img/s, "
              f"ratio {full_speed / bare_speed:.3f}")


if __name__ == "__main__":
    main()
