"""The ``visualad-med`` command: what each command runs, thin calls into the library (arguments: cli_arguments)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from visualad_med.apps.cli_arguments import build_parser
from visualad_med.model.scorings import COHORT_SCORINGS, DEFAULT_IMAGE_SCORING, UNTRAINED

logger = logging.getLogger("visualad_med")

SETUP_HINTS = {"output": " (or pass --output-inside-input if it is meant to be)",
               "scoring": " (pass --scoring visualad to score each scan by the head alone)",
               "cohort_match": " (--cohort-match)", "cohort_depth": " (--cohort-depth)",
               "cohort_intensity": " (--cohort-intensity)", "cohort_layers": " (--cohort-layers)"}
"""What to add to a :class:`~visualad_med.errors.SettingError`'s message, by the setting it names."""
QUIET_LOGGERS = {"highdicom": logging.WARNING, "faiss.loader": logging.WARNING, "monai.data.nvimgcodec_pydicom_plugin": logging.ERROR}
"""Libraries' loggers raised to a level, unless ``--verbose``: highdicom's INFO lines (dozens per DICOM SEG, as
the bundle's ``logging.conf`` silences them) and MONAI's notice that the nvImageCodec GPU decoder is absent."""
QUIET_WARNINGS = ("NvImgCodecPydicomReader",)
"""Starts of Python warnings' messages ignored unless ``--verbose`` (MONAI's nvImageCodec fallback, again)."""


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
                               window=args.cohort_window, candidates=args.cohort_candidates, match=args.cohort_match,
                               position_prior=args.cohort_prior, depth=args.cohort_depth,
                               intensity=args.cohort_intensity,
                               degrees=_integers(args.cohort_degrees), rescore=_integers(args.cohort_rescore),
                               layers=_integers(args.cohort_layers))


def _integers(listed: str | None) -> tuple[int, ...] | None:
    """``"1,3,5"`` -> ``(1, 3, 5)``; ``None`` stays ``None`` (the setting's default)."""
    return tuple(int(value) for value in listed.split(",")) if listed else None


def _refuse_cohort(args: argparse.Namespace, command: str) -> None:
    if args.scoring in COHORT_SCORINGS or args.reference or args.reference_bank:
        asked = f"--scoring {args.scoring}" if args.scoring in COHORT_SCORINGS else "--reference/--reference-bank"
        raise ValueError(f"{asked} scores images against other images and needs a cohort or a bank: use it with "
                         f"evaluate or infer, not {command}")


def load_cli_model(args: argparse.Namespace):
    """The model named by ``--head``, ``--backbone``, ``--backbone-weights`` and ``--image-size``."""
    from visualad_med.model.for_run import model_for_run

    return model_for_run(head_path(args), backbone=args.backbone, backbone_weights=args.backbone_weights,
                         image_size=args.image_size)


def map_settings(args: argparse.Namespace, model):
    """The run's map settings: the head's, with ``--scoring`` (one image's: not a cohort's) and ``--map-reference``."""
    return model.settings.for_run(None if args.scoring in COHORT_SCORINGS else args.scoring, args.map_reference)


def _run_settings(args: argparse.Namespace, **options):
    """The :class:`~visualad_med.inference.settings.RunSettings` of ``--planes``, ``--window``, ``--batch-size``
    and ``--threshold``."""
    from visualad_med.inference.settings import RunSettings

    return RunSettings(planes=tuple(p.strip() for p in args.planes.split(",")), window=_window(args.window),
                       batch_size=args.batch_size, threshold=args.threshold, precision=args.precision,
                       feature_store=args.feature_store, **options)


def _head_sha256(args: argparse.Namespace) -> str | None:
    from visualad_med.io.hashing import file_sha256

    head = head_path(args)
    return file_sha256(head) if head else None


def _infer(args: argparse.Namespace) -> int:
    from visualad_med.inference.folder import find_folder_scans, run_folder
    from visualad_med.model.devices import resolve_device

    scans = find_folder_scans(Path(args.input), Path(args.output), args.output_inside_input)
    model = load_cli_model(args).to(resolve_device(args.device))
    settings = _run_settings(args, overwrite=args.overwrite, map_dtype=args.map_dtype, preview=not args.no_preview,
                             map=map_settings(args, model))
    run = run_folder(model, scans, Path(args.output), settings, head_sha256=_head_sha256(args),
                     cohort=cohort_settings(args, model, Path(args.output), settings), where=args.input)
    print(_where_results_are(run.scans, Path(args.output)))
    return 1 if run.failed else 0


def _where_results_are(written, out_dir: Path) -> str:
    """The last line of ``infer``: counts, the summary, the HTML index and the best-scoring scan's picture."""
    parts = [f"{written.succeeded} scans succeeded, {written.failed} failed", f"summary {written.summary}"]
    if written.index is not None:
        parts.append(f"index {written.index}")
    best = written.best
    if best is not None:
        files = best["outputs"]
        shown = out_dir / files.get("preview", files["report"])
        parts.append(f"best-scoring scan {best['scan']} (score {best['score_top1pct']:.4g}): {shown}")
    return "; ".join(parts)


def _window(text: str) -> str | tuple[float, float]:
    """``auto``, a preset name, or ``WIDTH,LEVEL`` in HU."""
    if "," in text:
        width, level = (float(v) for v in text.split(","))
        return (width, level)
    return text


def _predict(args: argparse.Namespace) -> int:
    from visualad_med.inference.images import predict_files
    from visualad_med.model.devices import resolve_device

    model = load_cli_model(args)
    if args.cohort and args.scoring not in COHORT_SCORINGS:
        args.scoring = DEFAULT_IMAGE_SCORING
    cohort = cohort_settings(args, model, Path(args.out))
    succeeded, failed = predict_files(model, [Path(p) for p in args.images], Path(args.out),
                                      resolve_device(args.device), cohort, map_settings(args, model))
    logger.info("%d images succeeded, %d failed; results in %s", succeeded, failed, args.out)
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    from visualad_med.training.auxiliary import build_auxiliary_set
    from visualad_med.datasets import build_dataset, class_sampling
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
    balance, weights = class_sampling(base, args.balance_classes)
    provenance = {"data": [str(root) for root in args.data], "layout": args.layout, "split": args.split,
                  "classes": base.classes, "balance_classes": balance,
                  "synthetic": args.synthetic, "synthetic_probability": args.synthetic_probability,
                  "synthetic_source": args.synthetic_source, "synthetic_base": args.synthetic_base,
                  "augment": args.augment,
                  "augment_probability": args.augment_probability, "command": " ".join(args.command_line)}
    train(model, dataset, Path(args.out), train_config, resolve_device(args.device), calibration_set=base,
          resume=args.resume, provenance=provenance,
          sample_weights=weights)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from visualad_med.training.calibration import calibrate_threshold
    from visualad_med.datasets import build_dataset
    from visualad_med.model.devices import resolve_device

    _refuse_cohort(args, "calibrate")
    device = resolve_device(args.device)
    model = load_cli_model(args).to(device)
    chosen = map_settings(args, model)  # calibration's product: the head's own settings, saved with it
    model.set_scoring(chosen.scoring, weight=args.selfsim_weight).set_map_reference(chosen.map_reference)
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
    if args.scoring is None and not (args.reference or args.reference_bank):
        args.scoring = DEFAULT_IMAGE_SCORING
    results = evaluate(model, Path(args.data), args.layout, Path(args.out), split=args.split or "test",
                       classes=args.classes, batch_size=args.batch_size, overlays=args.overlays, device=args.device,
                       num_workers=args.workers, head=head_path(args), command=args.command_line,
                       extra_timings={"model_load_s": time.perf_counter() - started},
                       cohort=cohort_settings(args, model, Path(args.out), resize=args.resize or DEFAULT_RESIZE),
                       resize=args.resize or DEFAULT_RESIZE, map_settings=map_settings(args, model))
    logger.info("results:\n%s", markdown_table(results))
    return 0


def _evaluate_volumes(args: argparse.Namespace) -> int:
    from visualad_med.datasets.volume_pairs import labelled_volumes
    from visualad_med.model.devices import resolve_device
    from visualad_med.evaluation.volumes import evaluate_volumes

    pairs = labelled_volumes(args.data, args.labels, args.split)
    model = load_cli_model(args).to(resolve_device(args.device))
    settings = _run_settings(args, overwrite=True, map=map_settings(args, model))
    results = evaluate_volumes(model, pairs, Path(args.out), settings, data=str(args.data), head=head_path(args),
                               command=args.command_line, cohort=cohort_settings(args, model, Path(args.out), settings))
    pooled = results["pooled"]
    print(f"{results['counts']['evaluated']} scans evaluated, {results['counts']['failed']} failed; pooled voxel AP "
          f"{100 * pooled['voxel_ap']:.1f}, slice AUROC {100 * pooled['slice_auroc']:.1f}, Dice "
          f"{100 * pooled['dice']:.1f}; results in {args.out}")
    return 1 if results["counts"]["failed"] else 0


COMMANDS = {
    "predict": _predict,
    "evaluate": _evaluate,
    "infer": _infer,
    "train": _train,
    "calibrate": _calibrate,
    "make-meta": _make_meta,
}
"""What each command runs."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = ["visualad-med", *argv]
    configure_logging(args.verbose)
    with logging_redirect_tqdm():  # log lines above the progress bars, not through them
        try:
            return COMMANDS[args.command](args)
        except (ValueError, RuntimeError, OSError) as error:
            logger.error("%s%s", error, SETUP_HINTS.get(getattr(error, "setting", None), ""))
            return 2


def configure_logging(verbose: bool) -> None:
    """``LEVEL name: message`` lines on stderr, INFO and up (DEBUG with ``verbose``), Python warnings among them.

    Unless ``verbose``, the libraries' chatter of :data:`QUIET_LOGGERS` and :data:`QUIET_WARNINGS`
    is left out. Warnings go through logging so that they, too, are written above the progress bars.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    if verbose:
        return
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for start in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=start)


if __name__ == "__main__":
    sys.exit(main())
