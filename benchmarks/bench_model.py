"""Images per second of the full VisualAD model (``model(x)``) against the bare frozen backbone.

Both run the same architecture on the same batch in eval mode under ``torch.inference_mode``; the
full model includes the two tokens, SCA, SAF, upsampling, smoothing and scoring. Random weights
(speed does not depend on them). The two are timed alternately, call by call, and the ratio is the
median of the per-round ratios, so a change of clock speed or of load during the run hits both
alike (timing one after the other, best of 5, reported 0.944 where the model costs ~0.88).
``--profile`` prints where one batch of the full model spends its time beyond the backbone's
blocks (torch.profiler, by module).

    python benchmarks/bench_model.py [--repeats 9] [--threads N] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from visualad_med import build_model

CASES = [
    ("ViT-B/16 @ 224", "vit_base_patch16_clip_quickgelu_224", 224, (3, 6, 9, 12)),
    ("ViT-S/14 @ 448", "vit_small_patch14_dinov2", 448, (3, 6, 9, 12)),
]


def paired_speeds(bare, full, images: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median images/s of ``bare`` and ``full`` and the median of their per-round ratio (full / bare)."""
    bare_times, full_times = [], []
    with torch.inference_mode():
        bare(images), full(images)  # warm-up
        for _ in range(repeats):
            for run, times in ((bare, bare_times), (full, full_times)):
                start = time.perf_counter()
                run(images)
                times.append(time.perf_counter() - start)
    ratios = [b / f for b, f in zip(bare_times, full_times)]
    return images.shape[0] / statistics.median(bare_times), images.shape[0] / statistics.median(full_times), \
        statistics.median(ratios)


def profile(model, images: torch.Tensor) -> None:
    """Self CPU time of one batch of ``model(images)`` by operator, the 12 largest."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
        model(images)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="profile one batch of each full model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    for label, name, size, taps in CASES:
        bare = timm.create_model(name, pretrained=False, num_classes=0, img_size=size).eval()
        model = build_model(name, backbone_weights="random", image_size=size, taps=taps).eval()
        images = torch.randn(args.batch, 3, size, size)
        bare_speed, full_speed, ratio = paired_speeds(bare.forward_features, model, images, args.repeats)
        print(f"{label}: full model {full_speed:.2f} img/s, bare backbone {bare_speed:.2f} img/s, "
              f"ratio {ratio:.3f} (median of {args.repeats} alternating rounds)")
        if args.profile:
            profile(model, images)


if __name__ == "__main__":
    main()
