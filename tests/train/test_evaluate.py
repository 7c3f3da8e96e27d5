"""COCO keypoint evaluation: pycocotools scoring, the full prediction path, and the ablation."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ccm.checkpoint import PoseConfig, save_checkpoint
from ccm.codec import encode_heatmaps, encode_targets
from ccm.geometry import (
    apply_affine,
    crop_to_heatmap,
    grid_to_image,
    grid_to_image_matrix,
    invert_affine,
)
from ccm.nms import nms_similarity
from ccm.skeleton import flip_permutation
from train import ablate, evaluate
from train.annotations import image_index, load_coco, load_detections
from train.coco_metrics import METRICS, coco_evaluate
from train.evaluate import (
    EvalConfig,
    Poses,
    PredictedHeatmaps,
    decode_poses,
    evaluate_model,
    suppress_duplicates,
)
from train.samples import TopDownDataset
from train.synthetic.scenes import SceneConfig
from train.synthetic.writers import SyntheticConfig, generate_dataset

CONFIG = PoseConfig("simplebaseline_shufflenetv2")  # only its sizes: (256, 192) -> (64, 48)
PERM = flip_permutation(17)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    scene = SceneConfig(min_size=(192, 256), max_size=(256, 320), max_people=3)
    config = SyntheticConfig(
        seed=5, num_train=0, num_val=12, num_aic=0, num_unlabeled=0, num_videos=0, scene=scene
    )
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), config)


class Oracle(nn.Module):
    """A 'network' that knows the answer: for each crop it is given it returns the stored heatmaps
    of the identical crop, or, for a mirrored crop, those heatmaps mirrored with left and right
    swapped (what a perfect network predicts on a flipped input)."""

    def __init__(self, crops: Tensor, heatmaps: Tensor) -> None:
        super().__init__()
        self.heatmaps = heatmaps
        self.plain = {self.key(c): i for i, c in enumerate(crops)}
        self.mirrored = {self.key(c.flip(-1)): i for i, c in enumerate(crops)}
        self.seen = {"plain": 0, "mirrored": 0}

    @staticmethod
    def key(crop: Tensor) -> bytes:
        return crop.contiguous().numpy().tobytes()

    def forward(self, x: Tensor) -> Tensor:
        out = []
        for crop in x:
            key = self.key(crop)
            if key in self.plain:
                out.append(self.heatmaps[self.plain[key]])
                self.seen["plain"] += 1
            elif key in self.mirrored:
                out.append(self.heatmaps[self.mirrored[key]].flip(-1)[PERM])
                self.seen["mirrored"] += 1
            else:
                raise AssertionError("the oracle was given a crop it does not know")
        return torch.stack(out)


def gt_oracle(synthetic) -> Oracle:
    """Oracle over the val GT boxes: the dataset's own unbiased target heatmaps."""
    dataset = TopDownDataset(load_coco(synthetic.val_annotations, synthetic.val_images), CONFIG)
    items = [dataset[i] for i in range(len(dataset))]
    return Oracle(
        torch.stack([s["image"] for s in items]), torch.stack([s["heatmaps"] for s in items])
    )


def box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def gt_results(ann_file) -> list[dict]:
    data = json.loads(ann_file.read_text())
    return [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in data["annotations"]
        if a["num_keypoints"] > 0
    ]


def test_ground_truth_as_results_scores_one(synthetic):
    results = gt_results(synthetic.val_annotations)
    assert len(results) >= 10
    metrics = coco_evaluate(synthetic.val_annotations, results)
    assert set(metrics) == set(METRICS)
    for name in ("AP", "AP50", "AP75", "AR", "AR50", "AR75"):
        assert metrics[name] == 1.0, name
    # One person missing: recall (n - 1) / n at every OKS threshold.
    fewer = coco_evaluate(synthetic.val_annotations, results[1:])
    assert fewer["AR"] == pytest.approx((len(results) - 1) / len(results), abs=1e-12)


def test_oracle_through_the_full_prediction_path(synthetic, tmp_path):
    oracle = gt_oracle(synthetic)
    out = tmp_path / "results.json"
    config = EvalConfig(flip=True, decoder="dark", nms="softnms")
    metrics = evaluate_model(
        oracle, CONFIG, synthetic.val_annotations, synthetic.val_images, config, results_file=out
    )
    n = oracle.heatmaps.shape[0]
    assert oracle.seen == {"plain": n, "mirrored": n}
    assert metrics["AP"] >= 0.99  # measured 1.0
    # Crop -> flip fusion -> DARK -> heatmap-to-image lands on the annotated pixels exactly.
    truth = {}
    for a in json.loads(synthetic.val_annotations.read_text())["annotations"]:
        truth.setdefault(a["image_id"], []).append(np.reshape(a["keypoints"], (17, 3)))
    errors = []
    for r in json.loads(out.read_text()):
        pred = np.reshape(r["keypoints"], (17, 3))
        errors.append(
            min(
                np.abs(g[g[:, 2] > 0, :2] - pred[g[:, 2] > 0, :2]).max()
                for g in truth[r["image_id"]]
            )
        )
    assert len(errors) == n
    assert max(errors) < 1e-3  # measured 0.0 at the results' 1e-4 px rounding


def test_misaligned_predictions_lower_ap(synthetic, tmp_path):
    oracle = gt_oracle(synthetic)
    out = tmp_path / "results.json"
    ann, images = synthetic.val_annotations, synthetic.val_images
    base = evaluate_model(oracle, CONFIG, ann, images, EvalConfig(decoder="dark"), results_file=out)
    results = json.loads(out.read_text())
    shifted = [
        dict(r, keypoints=[v + 1.0 if j % 3 == 0 else v for j, v in enumerate(r["keypoints"])])
        for r in results
    ]
    # A systematic 1 px shift in x costs a lot on these small figures (measured 1.0 -> 0.647).
    assert coco_evaluate(ann, shifted)["AP"] < base["AP"] - 0.2
    # SSP: in this project's grids the mirrored maps align at alpha 0; alpha 1 shifts the fused
    # maps by half a heatmap pixel (measured AP 0.977).
    ssp1 = evaluate_model(oracle, CONFIG, ann, images, EvalConfig(decoder="dark", flip_alpha=1.0))
    assert ssp1["AP"] < base["AP"] - 0.01


def detection_oracle(synthetic) -> tuple[Oracle, list]:
    """Oracle over the detector's boxes: each crop gets the targets of the ground-truth person
    its box overlaps most, drawn in that crop; a false detection gets all-zero maps."""
    index = image_index(synthetic.val_annotations, synthetic.val_images)
    detections = load_detections(synthetic.val_detections, index)
    truth = load_coco(synthetic.val_annotations, synthetic.val_images)
    dataset = TopDownDataset(detections, CONFIG)
    crops, heatmaps = [], []
    for i, det in enumerate(detections):
        sample = dataset[i]
        crops.append(sample["image"])
        same_image = [t for t in truth if t.image_id == det.image_id]
        best = max(same_image, key=lambda t: box_iou(t.box, det.box), default=None)
        if best is None or box_iou(best.box, det.box) == 0:
            heatmaps.append(torch.zeros(17, *CONFIG.heatmap_size))
            continue
        kpts = torch.from_numpy(best.keypoints).float()[None]
        to_grid = invert_affine(
            grid_to_image_matrix(sample["center"][None], sample["scale"][None], CONFIG.heatmap_size)
        )
        xy = apply_affine(to_grid, kpts[..., :2])
        heatmaps.append(
            encode_targets(torch.cat((xy, kpts[..., 2:]), -1), CONFIG.heatmap_size)[0][0]
        )
    return Oracle(torch.stack(crops), torch.stack(heatmaps)), detections


def test_detection_boxes(synthetic, tmp_path):
    oracle, detections = detection_oracle(synthetic)
    ann, images, det_file = (
        synthetic.val_annotations,
        synthetic.val_images,
        synthetic.val_detections,
    )
    out = tmp_path / "results.json"
    config = EvalConfig(decoder="dark", nms="none")
    metrics = evaluate_model(oracle, CONFIG, ann, images, config, det_file, results_file=out)
    results = json.loads(out.read_text())
    assert len(results) == len(detections)
    # HRNet's rescoring: box score x mean of the keypoint scores above 0.2 (0 if none is).
    for r, det in zip(results, detections, strict=True):
        kpt_scores = np.asarray(r["keypoints"][2::3])
        confident = kpt_scores[kpt_scores > 0.2]
        expected = det.score * confident.mean() if confident.size else 0.0
        assert r["image_id"] == det.image_id
        assert r["score"] == pytest.approx(expected, abs=1e-4)  # keypoints are rounded to 1e-4
    # Perfect keypoints on every found person and false boxes ranked last: AP is the share of
    # COCOeval's 101 recall points the found persons reach.
    truth = load_coco(ann, images)
    found = sum(
        any(d.image_id == t.image_id and box_iou(d.box, t.box) > 0.5 for d in detections)
        for t in truth
    )
    assert found < len(truth)  # the detector misses someone: the test can tell
    assert metrics["AR"] == pytest.approx(found / len(truth), abs=1e-9)
    assert metrics["AP"] == pytest.approx(
        (math.floor(100 * found / len(truth)) + 1) / 101, abs=1e-9
    )
    # min_box_score drops low-scored boxes before the network sees them.
    config = EvalConfig(decoder="dark", nms="oks", min_box_score=0.5)
    evaluate_model(oracle, CONFIG, ann, images, config, det_file, results_file=out)
    kept = json.loads(out.read_text())
    assert 0 < len(kept) <= sum(d.score >= 0.5 for d in detections)


def test_empty_results_score_zero_with_a_warning(synthetic, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="train.coco_metrics"):  # the logger that warns
        metrics = coco_evaluate(synthetic.val_annotations, [])
    assert metrics == dict.fromkeys(METRICS, 0.0)
    assert "no keypoint results" in caplog.text
    # The same through the whole path: a detector that found nobody.
    empty = tmp_path / "no_detections.json"
    empty.write_text("[]")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.coco_metrics"):
        metrics = evaluate_model(
            nn.Identity(), CONFIG, synthetic.val_annotations, synthetic.val_images, EvalConfig(),
            empty,
        )  # fmt: skip
    assert metrics["AP"] == 0.0 and "no keypoint results" in caplog.text


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="decoder"):
        EvalConfig(decoder="soa")
    with pytest.raises(ValueError, match="blur_kernel"):
        EvalConfig(blur_kernel=4)
    with pytest.raises(ValueError, match="nms"):
        EvalConfig(nms="soft")
    no_flip = PredictedHeatmaps(
        torch.rand(1, 17, 8, 6), None, torch.zeros(1, 2), torch.ones(1, 2),
        torch.ones(1, dtype=torch.int64), torch.ones(1),
    )  # fmt: skip
    with pytest.raises(ValueError, match="flip"):
        decode_poses(no_flip, EvalConfig(flip=True), CONFIG)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    config = PoseConfig("simplebaseline_shufflenetv2", input_size=(64, 64))
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors",
                           config.build_model(), config)  # fmt: skip


def test_evaluate_cli(synthetic, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    metrics = evaluate.main(
        ["--checkpoint", str(tiny_checkpoint), "--data", str(synthetic.root), "--decoder", "dark",
         "--blur", "5", "--nms", "oks", "--out", str(out)]
    )  # fmt: skip
    header, values = capsys.readouterr().out.strip().splitlines()[-2:]
    assert header.split() == list(METRICS)
    assert len(values.split()) == len(METRICS)
    # Ground-truth boxes, no duplicates to suppress: one result per annotated person.
    assert len(json.loads(out.read_text())) == len(gt_results(synthetic.val_annotations))
    assert set(metrics) == set(METRICS)


def test_ablation_prints_every_row_of_table5(synthetic, tiny_checkpoint, tmp_path, capsys):
    markdown = tmp_path / "table5.md"
    metrics = ablate.main(
        ["--checkpoint", str(tiny_checkpoint), "--data", str(synthetic.root), "--markdown",
         str(markdown)]
    )  # fmt: skip
    rows = ablate.table5_rows()
    assert len(rows) == 25 == len(metrics)  # 4 decoders x 5 blocks + the 5-step SSP sweep
    lines = capsys.readouterr().out.strip().splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:4] == ["SOA", "Soft-NMS", "SSP", "GF"]
    )
    assert lines[header].split() == list(ablate.HEADER)
    body = [line.split() for line in lines[header + 1 :]]
    assert len(body) == 25
    assert [cells[:4] for cells in body] == [r.cells() for r in rows]
    assert body[0][:4] == ["-", "-", "-", "-"]
    assert body[19][:4] == ["paraboloid", "X", "1", "X"]
    assert [cells[2] for cells in body[20:]] == ["0.8", "0.6", "0.4", "0.2", "0"]
    assert all(len(cells) == len(ablate.HEADER) for cells in body)
    md = markdown.read_text().strip().splitlines()
    assert len(md) == 27 and md[0].count("|") == len(ablate.HEADER) + 1


def test_duplicates_are_suppressed_per_image():
    torch.manual_seed(0)
    base = torch.cat((torch.rand(1, 17, 2) * 100, torch.full((1, 17, 1), 0.9)), -1)
    near = base.clone()
    near[..., 0] += 0.5  # the same person, half a pixel to the right, scored lower
    poses = Poses(
        torch.cat((base, near, base)), torch.tensor([0.9, 0.8, 0.7]),
        torch.full((3,), 1e4), torch.tensor([1, 1, 2]),
    )  # fmt: skip
    w = float(nms_similarity(torch.cat((base, near)), torch.full((2,), 1e4))[0, 1])
    assert 0.9 < w < 1.0
    fused = suppress_duplicates(poses, "softnms", 0.9)
    assert fused.image_id.tolist() == [1, 2] and fused.scores.tolist() == pytest.approx([0.9, 0.7])
    # Eq. (20): the kept pose moves by w / (1 + w) of the way to its duplicate; image 2's pose,
    # identical to image 1's, is neither fused with nor suppressed by it.
    shift = fused.keypoints[0, :, 0] - base[0, :, 0]
    assert torch.allclose(shift, torch.full((17,), 0.5 * w / (1 + w)), atol=1e-4)
    assert torch.equal(fused.keypoints[1], base[0])
    greedy = suppress_duplicates(poses, "oks", 0.9)
    assert torch.equal(greedy.keypoints, torch.cat((base, base)))
    assert suppress_duplicates(poses, "none").keypoints.shape[0] == 3


def imported_predictions(crop: Tensor, mapping: str, center: Tensor, scale: Tensor):
    """PredictedHeatmaps of a perfect network trained with `mapping`, for crop points (N, 17, 2)
    of CONFIG's (256, 192) crops: Gaussians on the (64, 48) heatmaps where that codec puts them
    (msra: crop / 4, MMPose MSRAHeatmap; udp: crop (W_h - 1) / (W - 1), MMPose UDPHeatmap), and
    on the mirrored crops the mirror image of joint perm[k] in channel k."""

    def encode(points: Tensor) -> Tensor:
        if mapping == "msra":
            xy = points / 4
        elif mapping == "udp":
            xy = points * torch.tensor([47 / 191, 63 / 255], dtype=points.dtype)
        else:
            xy = crop_to_heatmap(points, 4)
        return encode_heatmaps(xy, CONFIG.heatmap_size).float()

    mirrored = crop[:, PERM].clone()
    mirrored[..., 0] = 191 - mirrored[..., 0]
    n = crop.shape[0]
    return PredictedHeatmaps(
        encode(crop), encode(mirrored), center, scale, torch.arange(n), torch.ones(n)
    )


@pytest.mark.parametrize(
    ("mapping", "flip_alpha"), [("pixel-center", 0.0), ("msra", 0.75), ("udp", 0.0)]
)
def test_imported_heatmap_mappings_decode_to_the_true_image_point(mapping, flip_alpha):
    g = torch.Generator().manual_seed(11)
    crop = torch.rand(3, 17, 2, generator=g, dtype=torch.float64) * torch.tensor([160.0, 220.0])
    crop = crop + 16  # away from the border, where DARK has neighbours
    center = torch.tensor([[300.0, 200.0], [120.5, 340.25], [640.0, 90.0]])
    scale = torch.tensor([[192.0, 256.0], [96.0, 128.0], [300.0, 400.0]])  # 1, 0.5, 1.5625 px/px
    truth = grid_to_image(crop, center.double(), scale.double(), (256, 192))
    predicted = imported_predictions(crop, mapping, center, scale)
    pose = replace(CONFIG, heatmap_mapping=mapping, flip_alpha=flip_alpha)
    plain = decode_poses(predicted, EvalConfig(flip=False, decoder="dark"), pose).keypoints
    # measured 4e-5 image px, float32 rounding of the image coordinates
    assert (plain[..., :2].double() - truth).abs().max() < 1e-3
    flipped = decode_poses(predicted, EvalConfig(flip=True, decoder="dark"), pose).keypoints
    # SSP's alpha 0.75 re-aligns msra's mirrored maps to 0.022 crop px
    # (see tests/realtime/pose/test_estimator.py).
    in_crop_px = (flipped[..., :2].double() - truth) * 192 / scale[:, None, :1]
    assert in_crop_px.abs().max() < (0.03 if mapping == "msra" else 1e-3)
    if mapping == "msra":
        # Read as this project's grids, every keypoint lands 1.5 crop px right and down.
        ours = decode_poses(predicted, EvalConfig(flip=False, decoder="dark"), CONFIG).keypoints
        expected = (1.5 * scale[:, 0] / 192).double()  # 1.5, 0.75, 2.34375 image px
        offset = ours[..., :2].double() - truth
        torch.testing.assert_close(
            offset, expected[:, None, None].expand_as(truth), rtol=0, atol=1e-4
        )
