"""Zero-shot dev-set table: a head's scorings on LGG (image + pixel) and polyps/skin (pixel).

One forward pass per image gives both the trained head's map and the
self-similarity map; ``combined`` maps with several weights are their sums
(upsampling and smoothing are linear), so every row comes from the same pass.
Rows: ``w=0`` is the head alone (visualad), ``w=inf`` self-similarity alone.
``--map-reference body`` re-references every row's map to its image's body
median (:mod:`visualad_med.model.body_reference`) after mixing; by default each head's own setting.

    python benchmarks/zero_shot_table.py --head bundles/visualad_zsad/models/visualad_head.safetensors
    python benchmarks/zero_shot_table.py --head untrained --backbone dinov2-s14-224
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from visualad_med import build_model, load_model
from visualad_med.model import checkpoint
from visualad_med.datasets import build_dataset, collate_skip_invalid
from visualad_med.evaluation.metrics import image_metrics
from visualad_med.evaluation.pixel_metrics import PixelMetricAccumulator
from visualad_med.model.torch_model import top_fraction_mean, upsample_scores
from visualad_med.model.body_reference import BODY_LEVEL, body_mask, reference_to_body

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def collect(model, root: Path, batch_size: int, body_level: float = BODY_LEVEL) -> tuple[torch.Tensor, ...]:
    """Smoothed head maps, smoothed self-similarity maps, masks, labels and body masks of a set (model resolution).

    Both maps are the method's (not body-referenced); the body masks let the caller reference them.
    """
    config = model.config
    dataset = build_dataset("mvfa", root, config.image_size, config.mean, config.std, missing_mask="skip")
    head_maps, selfsim_maps, masks, labels, bodies = [], [], [], [], []
    model.set_scoring("selfsim").set_map_reference("none")
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size, collate_fn=collate_skip_invalid):
            out = model(batch["image"])
            size = out["map"].shape[-2:]
            head = torch.stack(list(out["patch_scores"].values())).sum(0)
            head_maps.append(model.smoothing(upsample_scores(head, size)))
            selfsim_maps.append(out["map"])
            masks.append(batch["mask"] > 0.5)
            labels.append(batch["label"])
            bodies.append(body_mask(batch["image"], config.mean, config.std, body_level))
    return torch.cat(head_maps), torch.cat(selfsim_maps), torch.cat(masks), torch.cat(labels), torch.cat(bodies)


def row(maps: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, image_level: bool) -> dict[str, float]:
    accumulator = PixelMetricAccumulator()
    accumulator.update(maps.numpy(), masks.numpy())
    pixel = accumulator.compute()
    values = {"pixel_auroc": pixel["pixel_auroc"], "pixel_aupro": pixel["pixel_aupro"]}
    if image_level:
        values.update(image_metrics(top_fraction_mean(maps).numpy(), labels.numpy()))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", dest="heads", nargs="+", required=True,
                        help="head files (e.g. a run's checkpoints), or 'untrained'")
    parser.add_argument("--backbone", default="dinov2-s14-224", help="backbone of an untrained head")
    parser.add_argument("--image-size", type=int, default=None,
                        help="run a head at another input size (its SCA position tables are resampled)")
    parser.add_argument("--weights", default="0,0.5,1,2,inf", help="self-similarity weights of the combined rows")
    parser.add_argument("--lgg", type=Path, default=SHARED / "lgg_mvfa")
    parser.add_argument("--polyp", type=Path, default=SHARED / "polyp_skin_mvfa")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--map-reference", choices=["none", "body"], default=None,
                        help="reference of every row's map (default: the head's own)")
    parser.add_argument("--body-level", type=float, default=BODY_LEVEL,
                        help="body = grey above this fraction of the image's brightest (sensitivity check)")
    args = parser.parse_args()
    for head in args.heads:
        print_table(load_head_model(head, args.backbone, args.image_size), head, args)


def load_head_model(head: str, backbone: str, image_size: int | None):
    """The model of ``head`` ('untrained' for a fresh seeded head on ``backbone``), at ``image_size`` if given."""
    if head == "untrained":
        return build_model(backbone, image_size=image_size)
    if image_size:
        _, head_config, _ = checkpoint.read(Path(head))
        return build_model(head_config.backbone, image_size=image_size, taps=head_config.taps).load_head(head)
    return load_model(head)


def print_table(model, head: str, args: argparse.Namespace) -> None:
    """One markdown table: a row per self-similarity weight, from one pass over both dev sets."""
    own_reference, threshold = model.settings.map_reference, model.settings.threshold
    reference = args.map_reference or own_reference
    lgg, polyp = (collect(model, root, args.batch_size, args.body_level) for root in (args.lgg, args.polyp))
    print(f"head {head}, backbone {model.config.backbone}, image size {model.image_size}, "
          f"map reference {reference}, body level {args.body_level:g}")
    print("| scoring | LGG img AUROC | LGG img AP | LGG img F1-max | LGG px AUROC | LGG AUPRO | polyp/skin px AUROC |")
    print("|---|---|---|---|---|---|---|")
    for text in args.weights.split(","):
        weight = float(text)
        name = {0.0: "visualad"}.get(weight, "selfsim" if math.isinf(weight) else f"combined w={weight:g}")
        first = row(mixed(lgg, weight, reference), lgg[2], lgg[3], image_level=True)
        second = row(mixed(polyp, weight, reference), polyp[2], polyp[3], image_level=False)
        cells = [first["image_auroc"], first["image_ap"], first["image_f1_max"], first["pixel_auroc"],
                 first["pixel_aupro"], second["pixel_auroc"]]
        print(f"| {name} | " + " | ".join(f"{100 * np.float64(v):.1f}" for v in cells) + " |", flush=True)
    if threshold is not None and reference == own_reference:
        cells = [mask_agreement(mixed(data, 0.0, reference), data[2], threshold) for data in (lgg, polyp)]
        print(f"at the head's threshold {threshold:.4f} (visualad): LGG marks {cells[0][0]:.1f} % of the pixels, "
              f"Dice {cells[0][1]:.3f}; polyp/skin marks {cells[1][0]:.1f} %, Dice {cells[1][1]:.3f}")


def mixed(data: tuple[torch.Tensor, ...], weight: float, reference: str) -> torch.Tensor:
    """Maps of a collected set: head + ``weight`` x self-similarity (``inf``: self-similarity alone), referenced."""
    maps = data[1] if math.isinf(weight) else data[0] + weight * data[1]
    return reference_to_body(maps, data[4]) if reference == "body" else maps


def mask_agreement(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> tuple[float, float]:
    """``(percent of pixels above threshold, Dice of that mask with the ground truth)`` over all images."""
    predicted = maps > threshold
    overlap = (predicted & masks).sum().item()
    return 100.0 * predicted.float().mean().item(), 2.0 * overlap / max(1, predicted.sum().item() + masks.sum().item())


if __name__ == "__main__":
    main()
