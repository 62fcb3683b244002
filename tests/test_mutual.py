"""Cohort (mutual) scoring: the search, the interval average, candidates, and the public commands."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from builders import make_mvfa
from visualad_med.apps.cli import main
from visualad_med.model.cohort import CohortSettings, fuse_patch_scores, smooth_across_slices
from visualad_med.model.mutual import (
    aggregate_neighbourhood,
    cohort_scores,
    grouped_scores,
    interval_average,
    nearest_candidates,
    patch_distances,
    position_candidates,
    rescore_neighbourhood,
    robust_standardise,
)

MODEL = ["--head", "untrained", "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random",
         "--image-size", "32", "--device", "cpu"]


def normal_cohort(images: int = 12, layers: int = 2, patches: int = 16, width: int = 24, seed: int = 0):
    """Features whose patches are noisy copies of 6 shared prototypes: what repeats across a cohort."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(layers, 6, width, generator=generator)
    picks = torch.randint(6, (images, patches), generator=generator)
    features = prototypes[:, picks].permute(1, 0, 2, 3)
    features = features + 0.1 * torch.randn(features.shape, generator=generator)
    return F.normalize(features, dim=-1)


def test_a_patch_that_no_other_image_has_ranks_first():
    features = normal_cohort()
    features[7, :, 5] = F.normalize(torch.randn(features.shape[1], features.shape[3]), dim=-1)
    scores = cohort_scores(features, nearest_candidates(features, neighbours=8), fraction=0.3, progress=False)
    assert scores.amax(dim=1).argmax() == 7
    assert scores[7].argmax() == 5
    assert scores[7, 5] > 3 * scores[torch.arange(12) != 7].amax()


def test_chunked_search_equals_the_exact_one():
    features = normal_cohort(images=9, seed=1)
    query, references = features[0], features[1:]
    exact = torch.stack([
        (1.0 - torch.stack([query[t] @ references[r, t].T for t in range(query.shape[0])]).amax(-1)).mean(0)
        for r in range(references.shape[0])
    ])
    for chunk in (1, 3, 100):
        torch.testing.assert_close(patch_distances(query, references, chunk), exact, rtol=0, atol=1e-6)


def test_grouped_scores_take_each_groups_nearest_member_then_the_interval_average():
    features = normal_cohort(images=8, seed=4)
    groups = [3, 3, 5, 5, 5, 9, 9]
    distances = patch_distances(features[0], features[1:])
    per_group = torch.stack([distances[0:2].amin(0), distances[2:5].amin(0), distances[5:7].amin(0)])
    expected = per_group.sort(dim=0).values[:2].mean(0)  # ceil(0.5 x 3) = 2 closest groups
    torch.testing.assert_close(grouped_scores(features[0], features[1:], groups, fraction=0.5), expected)
    assert torch.equal(grouped_scores(features[0], features[:0], [], fraction=0.5), torch.zeros(features.shape[2]))


def test_interval_average_takes_the_closest_share():
    distances = torch.tensor([[0.1], [0.9], [0.2], [0.8], [0.3]])
    assert interval_average(distances, 0.4).item() == pytest.approx(0.15)
    assert interval_average(distances, 1.0).item() == pytest.approx(0.46)


def test_slices_are_compared_with_other_scans_at_their_position_and_one_scan_falls_back():
    scan_of = [0] * 5 + [1] * 5 + [2] * 5
    position = [k / 4 for k in range(5)] * 3
    candidates, fallback = position_candidates(scan_of, position, window=0.3, per_scan=2)
    assert not fallback
    groups = candidates(0)  # scan 0, position 0
    assert groups == [[5, 6], [10, 11]]
    assert all(scan_of[j] != scan_of[7] for group in candidates(7) for j in group)
    alone, fallback = position_candidates([0] * 5, position[:5], min_gap=0.5)
    assert fallback and alone(0) == [[2], [3], [4]]


def test_fused_scores_are_on_one_robust_scale():
    generator = torch.Generator().manual_seed(2)
    head, mutual = 50 + 10 * torch.randn(8, 30, generator=generator), 0.01 * torch.rand(8, 30, generator=generator)
    fused = fuse_patch_scores("visualad+mutual", head, mutual)
    torch.testing.assert_close(fused, robust_standardise((robust_standardise(head) + robust_standardise(mutual)) / 2))
    assert abs(float(fused.median())) < 1e-6
    assert float((fused - fused.median()).abs().median() * 1.4826) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="unknown cohort scoring"):
        CohortSettings("cohort")


def write_volumes(folder: Path, count: int) -> None:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        data = rng.normal(300.0, 30.0, (20, 18, 8)).astype(np.float32)
        if k == 1:
            data[6:12, 6:12, 3:5] = 900.0  # a lesion only this scan has
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), folder / f"scan{k}.nii.gz")


def test_infer_with_mutual_scoring_records_the_cohort_and_a_single_scan_falls_back(tmp_path, caplog):
    write_volumes(tmp_path / "scans", 3)
    torch.manual_seed(0)
    assert main(["infer", str(tmp_path / "scans"), str(tmp_path / "out"), "--scoring", "mutual", *MODEL]) == 0
    reports = {k: json.loads((tmp_path / "out" / f"scan{k}_report.json").read_text()) for k in range(3)}
    assert all(r["cohort"]["scans"] == 3 and not r["cohort"]["fallback_same_scan"] for r in reports.values())
    assert reports[0]["threshold"] == reports[2]["threshold"] and "robust sd" in reports[0]["threshold_source"]
    maps = {k: np.asarray(nib.load(tmp_path / "out" / f"scan{k}_anomaly.nii.gz").dataobj) for k in range(3)}
    assert maps[1][6:12, 6:12, 3:5].mean() > max(maps[0][6:12, 6:12, 3:5].mean(), maps[2][6:12, 6:12, 3:5].mean())
    assert not list((tmp_path / "out").glob(".cohort_*"))

    write_volumes(tmp_path / "one", 1)
    assert main(["infer", str(tmp_path / "one"), str(tmp_path / "out_one"), "--scoring", "visualad+mutual",
                 *MODEL]) == 0
    report = json.loads((tmp_path / "out_one" / "scan0_report.json").read_text())
    assert report["cohort"]["fallback_same_scan"] is True and "cohort of one scan" in caplog.text


def test_evaluate_2d_with_cohort_scoring_writes_results(tmp_path):
    root = make_mvfa(tmp_path / "mvfa", "Brain")
    torch.manual_seed(0)
    assert main(["evaluate", "--data", str(root), "--layout", "mvfa", "--out", str(tmp_path / "out"), "--scoring",
                 "visualad+mutual", "--cohort-neighbours", "2", *MODEL]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["cohort"]["scoring"] == "visualad+mutual" and results["cohort"]["neighbours"] == 2
    assert results["mean"]["metrics"]["image_auroc"] is not None


def test_evaluate_2d_scores_each_class_as_a_cohort_by_default(tmp_path):
    root = make_mvfa(tmp_path / "mvfa", "Brain")
    torch.manual_seed(0)
    assert main(["evaluate", "--data", str(root), "--layout", "mvfa", "--out", str(tmp_path / "default"),
                 *MODEL]) == 0
    torch.manual_seed(0)
    assert main(["evaluate", "--data", str(root), "--layout", "mvfa", "--out", str(tmp_path / "head"),
                 "--scoring", "visualad", *MODEL]) == 0
    default, head = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("default", "head"))
    assert default["cohort"]["scoring"] == "visualad+mutual" and head["cohort"] is None
    assert (tmp_path / "default" / "scores.csv").read_text() != (tmp_path / "head" / "scores.csv").read_text()


def test_predict_cohort_scores_images_against_each_other(tmp_path, caplog):
    """``predict --cohort``: a patch only one image has stands out of the fused map; the record says how it was
    scored; one readable image (the others unreadable) falls back to the head, with a warning."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(5):
        grey = rng.normal(120, 10, (48, 48)).clip(0, 255).astype(np.uint8)
        if k == 2:
            grey[16:32, 16:32] = 250  # something only this image has
        path = tmp_path / f"img{k}.png"
        Image.fromarray(grey).save(path)
        paths.append(str(path))
    torch.manual_seed(0)
    assert main(["predict", *paths, "--out", str(tmp_path / "out"), "--cohort", *MODEL]) == 0
    records = [json.loads((tmp_path / "out" / f"img{k}.json").read_text()) for k in range(5)]
    assert all(r["scoring"] == "visualad+mutual" and r["cohort"]["images"] == 5 for r in records)
    assert all(r["threshold"] == 4.0 for r in records)
    assert max(range(5), key=lambda k: records[k]["score"]) == 2
    assert (tmp_path / "out" / "img2_overlay.png").is_file()

    (tmp_path / "broken.png").write_bytes(b"not a png")
    torch.manual_seed(0)
    assert main(["predict", paths[0], str(tmp_path / "broken.png"), "--out", str(tmp_path / "one"), "--cohort",
                 *MODEL]) == 1
    alone = json.loads((tmp_path / "one" / "img0.json").read_text())
    assert alone["cohort"] is None and "a cohort needs two or more" in caplog.text
    assert "broken.png" in caplog.text


def test_reference_bank_saved_and_reloaded_gives_identical_maps(tmp_path):
    root = make_mvfa(tmp_path / "mvfa", "Brain")
    references = tmp_path / "refs"
    references.mkdir()
    for image in sorted((root / "Brain_AD/test/good/img").iterdir())[:2]:
        (references / image.name).write_bytes(image.read_bytes())
    common = ["evaluate", "--data", str(root), "--layout", "mvfa", *MODEL]
    torch.manual_seed(0)
    assert main([*common, "--out", str(tmp_path / "built"), "--reference", str(references)]) == 0
    bank = tmp_path / "built" / "reference_bank.safetensors"
    assert bank.is_file()
    torch.manual_seed(0)
    assert main([*common, "--out", str(tmp_path / "reused"), "--reference-bank", str(bank)]) == 0
    built, reused = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("built", "reused"))
    assert built["cohort"]["compared_with"] == "2 reference images"
    assert built["mean"]["metrics"] == reused["mean"]["metrics"]
    assert (tmp_path / "built" / "scores.csv").read_text() == (tmp_path / "reused" / "scores.csv").read_text()


def test_reference_folder_without_images_and_a_bank_of_another_size_or_resize_policy_are_refused(tmp_path, caplog):
    root = make_mvfa(tmp_path / "mvfa", "Brain")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    common = ["evaluate", "--data", str(root), "--layout", "mvfa", "--out", str(tmp_path / "out")]
    torch.manual_seed(0)
    assert main([*common, "--reference", str(tmp_path / "empty"), *MODEL]) == 2
    assert "no image files" in caplog.text
    references = tmp_path / "refs"
    references.mkdir()
    image = sorted((root / "Brain_AD/test/good/img").iterdir())[0]
    (references / image.name).write_bytes(image.read_bytes())
    torch.manual_seed(0)
    assert main([*common, "--reference", str(references), *MODEL]) == 0
    other_size = [*MODEL[:-4], "--image-size", "48", "--device", "cpu"]
    torch.manual_seed(0)
    assert main([*common, "--reference-bank", str(tmp_path / "out" / "reference_bank.safetensors"),
                 *other_size]) == 2
    assert "reference bank does not fit this model: image size 32 (model 48)" in caplog.text
    torch.manual_seed(0)
    assert main([*common, "--reference-bank", str(tmp_path / "out" / "reference_bank.safetensors"), "--resize",
                 "squash", *MODEL]) == 2
    assert "references read with resize policy 'pad' (this run: 'squash')" in caplog.text


def test_smoothing_across_slices_keeps_constants_spreads_a_spike_and_skips_absent_slices():
    indices = torch.tensor([0, 1, 2, 5, 6])  # slices 3 and 4 had no body
    constant = torch.full((5, 4), 2.5)
    torch.testing.assert_close(smooth_across_slices(constant, indices, 1.0), constant)
    spike = torch.zeros(5, 4)
    spike[1] = 1.0
    smoothed = smooth_across_slices(spike, indices, 1.0)
    assert smoothed[1, 0] < 1.0 and smoothed[0, 0] > 0 and smoothed[2, 0] > 0
    assert smoothed[3, 0] == 0 and smoothed[4, 0] == 0  # 4 and 5 slices away: beyond 3 sigma
    edge = torch.zeros(5, 4)
    edge[3:] = 1.0  # slices 5 and 6 average only with each other, not with the absent 3 and 4
    torch.testing.assert_close(smooth_across_slices(edge, indices, 0.9)[3:], torch.ones(2, 4))  # 3 sigma < 3 slices
    torch.testing.assert_close(smooth_across_slices(spike, indices, 0.0), spike)


def test_neighbourhood_aggregation_matches_a_slow_reference():
    """Degree r: each patch's normalised mean over the r x r neighbours that exist on the grid (a loop)."""
    generator = torch.Generator().manual_seed(0)
    rows, columns, width = 4, 5, 6
    features = F.normalize(torch.randn(2, 3, rows * columns, width, generator=generator), dim=-1)
    assert aggregate_neighbourhood(features, (rows, columns), 1) is features
    for degree in (3, 5):
        fast = aggregate_neighbourhood(features, (rows, columns), degree)
        grid = features.reshape(2, 3, rows, columns, width)
        slow = torch.empty_like(grid)
        half = degree // 2
        for i in range(rows):
            for j in range(columns):
                block = grid[:, :, max(0, i - half):i + half + 1, max(0, j - half):j + half + 1]
                slow[:, :, i, j] = F.normalize(block.mean(dim=(2, 3)), dim=-1)
        torch.testing.assert_close(fast, slow.reshape(2, 3, rows * columns, width), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        aggregate_neighbourhood(features, (rows, columns), 2)


def test_rescoring_moves_a_lone_outlier_towards_its_look_alikes():
    """Two groups of look-alike images; one image of the first group scores high alone: re-scoring pulls it
    towards its group, leaves the window k = 1 as it was, and does not mix the groups."""
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(2, 16, generator=generator), dim=-1)
    descriptors = F.normalize(centres.repeat_interleave(5, dim=0) + 0.05 * torch.randn(10, 16, generator=generator),
                              dim=-1)
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    torch.testing.assert_close(rescore_neighbourhood(scores, descriptors, (1,)), scores)
    rescored = rescore_neighbourhood(scores, descriptors, (1, 2, 3))
    assert 1.0 < rescored[4] < 4.0
    assert torch.all(rescored[5:] == 3.0)
    assert torch.all(rescored[:4] >= 1.0) and torch.all(rescored[:4] < rescored[4])


def test_cohort_layers_are_chosen_and_checked(tmp_path):
    root = make_mvfa(tmp_path / "mvfa", "Brain")
    torch.manual_seed(0)
    assert main(["evaluate", "--data", str(root), "--layout", "mvfa", "--out", str(tmp_path / "out"),
                 "--cohort-layers", "3,1", *MODEL]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["cohort"]["layers"] == [1, 3]
    assert main(["evaluate", "--data", str(root), "--layout", "mvfa", "--out", str(tmp_path / "bad"),
                 "--cohort-layers", "99", *MODEL]) == 2
