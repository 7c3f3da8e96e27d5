"""Hard-negative mining (HNDM, Sec. 4.1) and pseudo labels from a teacher ensemble (Sec. 4.2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ccm.checkpoint import PoseConfig, save_checkpoint
from train import mine_negatives, pseudo_label
from train.annotations import image_index, load_negatives, load_pseudo_labels
from train.mine_negatives import gt_boxes_from_coco, mine_hard_negatives
from train.pseudo_label import pick_threshold
from train.synthetic.scenes import SceneConfig
from train.synthetic.writers import SyntheticConfig, generate_dataset

# Ground-truth person boxes [x, y, w, h]: image 1 has one person spanning x 10..30, y 10..50;
# image 2 has nobody.
GT = {1: [[10, 10, 20, 40]], 2: []}


def det(image_id, bbox, score, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


HAND_MADE = [
    det(1, [30, 10, 10, 10], 0.9),  # 0 touches the right edge (x 30..40): no overlap -> kept
    det(1, [29, 20, 10, 10], 0.9),  # 1 overlaps by one pixel column (x 29..30) -> dropped
    det(1, [100, 100, 20, 20], 0.5),  # 2 score exactly 0.5, far away -> kept
    det(1, [100, 100, 20, 20], 0.4999),  # 3 below 0.5 -> dropped
    det(1, [10, 50, 20, 5], 0.8),  # 4 touches the bottom edge -> kept
    det(1, [30, 50, 5, 5], 0.8),  # 5 touches the bottom-right corner only -> kept
    det(1, [15, 15, 5, 5], 0.99),  # 6 inside the person -> dropped
    det(1, [0, 0, 200, 200], 0.95),  # 7 contains the person -> dropped
    det(2, [0, 0, 50, 50], 0.7),  # 8 image without people -> kept
    det(2, [60, 0, 50, 50], 0.2),  # 9 image without people, low score -> dropped
    det(2, [0, 60, 50, 50], 0.9, category_id=2),  # 10 not a person -> ignored
]


def test_hndm_keeps_exactly_the_confident_detections_touching_no_person():
    mined = mine_hard_negatives(HAND_MADE, GT, score_threshold=0.5)
    assert mined == [HAND_MADE[i] for i in (0, 2, 4, 5, 8)]
    assert mined[0] is not HAND_MADE[0]  # copies, the input is left alone
    # A lower threshold adds exactly the two low-scored boxes that touch no one.
    low = mine_hard_negatives(HAND_MADE, GT, score_threshold=0.1)
    assert low == [HAND_MADE[i] for i in (0, 2, 3, 4, 5, 8, 9)]


def test_hndm_refuses_images_it_knows_nothing_about():
    with pytest.raises(ValueError, match="image 3"):
        mine_hard_negatives([det(3, [0, 0, 5, 5], 0.9)], GT)
    with pytest.raises(ValueError, match="bbox"):
        mine_hard_negatives([det(1, [0, 0, -5, 5], 0.9)], GT)


def test_hndm_cli_counts_crowds_and_unlabelled_persons(tmp_path):
    """Crowd regions and persons without keypoints are people too: no negatives on them."""
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 320, "height": 240},
            {"id": 2, "file_name": "b.jpg", "width": 320, "height": 240},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 40], "iscrowd": 0,
             "num_keypoints": 3, "keypoints": [0] * 51},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [200, 100, 50, 50], "iscrowd": 1,
             "num_keypoints": 0, "keypoints": [0] * 51},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [100, 0, 10, 30], "iscrowd": 0,
             "num_keypoints": 0, "keypoints": [0] * 51},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco))
    detections = [
        det(1, [210, 110, 10, 10], 0.9),  # inside the crowd region -> dropped
        det(1, [105, 5, 20, 20], 0.9),  # overlaps the person without keypoints -> dropped
        det(1, [40, 100, 30, 60], 0.6),  # clear of everyone -> kept
        det(2, [0, 0, 50, 50], 0.5),  # image without people -> kept
    ]
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(detections))
    assert sorted(gt_boxes_from_coco(ann)) == [1, 2]
    out = tmp_path / "negatives.json"
    mine_negatives.main(
        ["--ann", str(ann), "--images", str(tmp_path), "--detections", str(det_file), "--out",
         str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == detections[2:]
    negatives = load_negatives(out, image_index(ann, tmp_path))
    assert [(n.image_id, n.box, n.source) for n in negatives] == [
        (1, (40.0, 100.0, 70.0, 160.0), "negative"),
        (2, (0.0, 0.0, 50.0, 50.0), "negative"),
    ]


def test_pick_threshold_rule():
    # Scores per image: 4 images, 5 boxes; sorted 0.99, 0.9, 0.8, 0.8, 0.7.
    scores = [np.array([0.9, 0.8]), np.array([0.8]), np.array([]), np.array([0.99, 0.7])]
    # Target 0.5 per image needs 2 boxes of 4 images; the 2nd-largest score is 0.9 (mean 2/4).
    assert pick_threshold(scores, 0.5) == 0.9
    # Target 0.75 needs 3 boxes: the 3rd-largest is 0.8, tied with the 4th, so both are kept
    # (mean 4/4 = 1.0 >= 0.75); at 0.9 the mean is only 2/4.
    assert pick_threshold(scores, 0.75) == 0.8
    # Target exactly 1.0: 4 boxes, t = 0.8 (mean 4/4, equal counts as reached).
    assert pick_threshold(scores, 1.0) == 0.8
    # Target 1.25 needs all 5 boxes: t = 0.7.
    assert pick_threshold(scores, 1.25) == 0.7
    # Target 2.0 needs 8 boxes, there are 5: keep everything (t = the lowest score, a warning).
    assert pick_threshold(scores, 2.0) == 0.7
    # 10 images, 30 distinct scores 0.01 .. 0.30; target 2.1 = 21 boxes / 10 images exactly,
    # so t is the 21st-largest score, 0.10 (ceil(2.1 * 10) in floats would give 22 and 0.09).
    many = [np.round(np.arange(1, 31) / 100, 2)[i::10] for i in range(10)]
    assert pick_threshold(many, 2.1) == 0.10
    with pytest.raises(ValueError, match="no detections"):
        pick_threshold([np.array([]), np.array([])], 1.0)
    with pytest.raises(ValueError, match="target_mean"):
        pick_threshold(scores, 0.0)


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    scene = SceneConfig(min_size=(192, 256), max_size=(192, 256), max_people=2)
    config = SyntheticConfig(
        seed=9, num_train=0, num_val=0, num_aic=0, num_unlabeled=4, num_videos=0, scene=scene
    )
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), config)


def teacher(path: Path, biases: list[float], input_size=(64, 64)) -> Path:
    """A tiny random-weight teacher whose heatmap k sits at `biases[k]` plus a ripple of about
    1e-4 (its random features, scaled up so every map has a peak): its keypoint scores are the
    biases to within 1e-3."""
    config = PoseConfig("simplebaseline_shufflenetv2", input_size=input_size)
    torch.manual_seed(len(biases) + int(100 * biases[-1]))
    model = config.build_model()
    with torch.no_grad():
        model.head.final_layer.weight.mul_(1e7)
        model.head.final_layer.bias.copy_(torch.tensor(biases))
    return save_checkpoint(path, model, config)


def test_pseudo_labels_from_a_two_teacher_ensemble(unlabeled, tmp_path, capsys):
    images = json.loads(unlabeled.unlabeled_list.read_text())
    ids = [im["id"] for im in images]
    # Labelled set: 3 persons on 2 images -> 1.5 per image (the crowd region is not a person).
    labelled = tmp_path / "labelled.json"
    labelled.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
        "annotations": [{"id": k, "image_id": 1 + k % 2, "category_id": 1, "iscrowd": int(k == 3),
                         "bbox": [0, 0, 1, 1]} for k in range(4)],
    }))  # fmt: skip
    # 4 unlabeled images x 1.5 = 6 boxes: scores sorted .99 .97 .96 .95 .94 .93 | .5 .3 .2,
    # so the threshold is 0.93 and the 6 boxes scoring >= 0.93 are kept.
    scores = [[0.99, 0.95, 0.3], [0.97, 0.5], [], [0.96, 0.94, 0.93, 0.2]]
    detections = [
        {"image_id": ids[i], "category_id": 1, "bbox": [20 + 30 * j, 10, 40, 100], "score": s}
        for i, image_scores in enumerate(scores)
        for j, s in enumerate(image_scores)
    ]
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(detections))
    kept = [d for d in detections if d["score"] >= 0.93]

    # Face points (0-4, a set the flip permutation maps onto itself) at 1.0, the rest at 0.7.
    a = teacher(tmp_path / "a.safetensors", [1.0] * 5 + [0.7] * 12)
    b = teacher(tmp_path / "b.safetensors", [0.85] * 17)
    c = teacher(tmp_path / "c.safetensors", [0.75] * 17)

    def run(teachers: list[Path], out: Path) -> dict:
        return pseudo_label.main(
            ["--teachers", *map(str, teachers), "--labelled-ann", str(labelled),
             "--unlabeled-images", str(unlabeled.unlabeled_images), "--unlabeled-list",
             str(unlabeled.unlabeled_list), "--detections", str(det_file), "--out", str(out),
             "--device", "cpu"]
        )  # fmt: skip

    # a + b: mean scores 0.925 on the face (> 0.9: labels), 0.775 elsewhere (unlabelled).
    out = tmp_path / "pseudo.json"
    written = run([a, b], out)
    assert "threshold 0.9300" in capsys.readouterr().out
    assert json.loads(out.read_text()) == written
    assert [im["id"] for im in written["images"]] == ids
    instances = load_pseudo_labels(out, unlabeled.unlabeled_images)
    assert len(instances) == len(kept) == 6
    for inst, d in zip(instances, kept, strict=True):
        x, y, w, h = d["bbox"]
        assert (inst.image_id, inst.box, inst.score, inst.source) == (
            d["image_id"],
            (x, y, x + w, y + h),
            d["score"],
            "unlabeled",
        )
        assert inst.keypoints[:5, 2].tolist() == [2] * 5
        assert not inst.keypoints[5:].any()
        # The labels lie inside the crop region around the box (1.25 x its 64 x 64 square).
        half = 1.25 * max(w, h) / 2
        centre = np.array([x + w / 2, y + h / 2])
        assert (np.abs(inst.keypoints[:5, :2] - centre) <= half).all()

    # a + c: the face averages 0.875 <= 0.9, so nobody keeps a label and every person is
    # dropped (the maximum, 1.0, would have labelled the face).
    empty = run([a, c], tmp_path / "none.json")
    assert empty["annotations"] == []
    assert load_pseudo_labels(tmp_path / "none.json", unlabeled.unlabeled_images) == []


def test_teachers_of_different_input_sizes_are_refused(unlabeled, tmp_path):
    a = teacher(tmp_path / "a.safetensors", [0.5] * 17, input_size=(64, 64))
    b = teacher(tmp_path / "b.safetensors", [0.5] * 17, input_size=(96, 64))
    det_file = tmp_path / "dets.json"
    det_file.write_text("[]")
    with pytest.raises(ValueError, match="input size"):
        pseudo_label.main(
            ["--teachers", str(a), str(b), "--labelled-ann", str(det_file), "--unlabeled-images",
             str(unlabeled.unlabeled_images), "--unlabeled-list", str(unlabeled.unlabeled_list),
             "--detections", str(det_file), "--out", str(tmp_path / "out.json")]
        )  # fmt: skip
    assert not (tmp_path / "out.json").exists()


def test_hndm_cli_with_a_detector(unlabeled, tmp_path, monkeypatch):
    """--detector runs ultralytics (a random-weight yolo11n built from its yaml, offline)."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))
    images = json.loads(unlabeled.unlabeled_list.read_text())[:2]
    boxes = [[40, 20, 60, 120], [150, 30, 50, 100]]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": images,
        "annotations": [{"id": k + 1, "image_id": images[0]["id"], "category_id": 1, "bbox": b}
                        for k, b in enumerate(boxes)],
    }))  # fmt: skip
    out = tmp_path / "negatives.json"
    negatives = mine_negatives.main(
        ["--ann", str(ann), "--images", str(unlabeled.unlabeled_images), "--detector",
         "yolo11n.yaml", "--imgsz", "256", "--conf", "0.0", "--score-threshold", "0.0",
         "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert json.loads(out.read_text()) == negatives
    assert negatives  # random weights at conf 0 propose boxes everywhere
    for n in negatives:
        assert n["image_id"] in {im["id"] for im in images} and n["category_id"] == 1
        x, y, w, h = n["bbox"]
        if n["image_id"] == images[0]["id"]:
            for bx, by, bw, bh in boxes:
                overlap_w = min(x + w, bx + bw) - max(x, bx)
                overlap_h = min(y + h, by + bh) - max(y, by)
                assert overlap_w <= 0 or overlap_h <= 0


def test_teachers_with_different_heatmap_mappings_are_refused():
    # Their heatmaps are averaged before decoding: an msra teacher's sit 0.375 px off ours.
    ours = PoseConfig("ccm_mobilenetv2", input_size=(64, 64))
    mmpose = PoseConfig("ccm_mobilenetv2", input_size=(64, 64), heatmap_mapping="msra")
    pseudo_label.check_teachers([ours, ours], ["a", "b"])
    with pytest.raises(
        ValueError, match="teacher b has heatmap mapping msra, teacher a pixel-center"
    ):
        pseudo_label.check_teachers([ours, mmpose], ["a", "b"])
