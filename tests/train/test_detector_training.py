import json

import pytest

from train.detector_training import (
    convert_split,
    evaluate_detector,
    load_yolo,
    train_detector,
    yolo_labels,
)
from train.synthetic.writers import SyntheticConfig, generate_dataset


def tiny_config(seed: int, train: int) -> SyntheticConfig:
    return SyntheticConfig(
        seed=seed, num_train=train, num_val=2, num_aic=0, num_unlabeled=0, num_videos=0
    )


def test_yolo_labels_normalise_and_clip_person_boxes():
    annotations = [
        {"bbox": [10, 20, 30, 40], "category_id": 1},
        {"bbox": [-10, 50, 40, 20], "category_id": 1},  # clipped at the left edge to x 0..30
        {"bbox": [90, 90, 30, 30], "category_id": 1},  # clipped to 90..100
        {"bbox": [5, 5, 10, 10], "category_id": 1, "iscrowd": 1},
        {"bbox": [5, 5, 10, 10], "category_id": 3},
        {"bbox": [99.5, 10, 5, 5], "category_id": 1},  # less than a pixel left inside
    ]
    assert yolo_labels(annotations, width=100, height=100) == [
        "0 0.250000 0.400000 0.300000 0.400000",
        "0 0.150000 0.600000 0.300000 0.200000",
        "0 0.950000 0.950000 0.100000 0.100000",
    ]


def test_convert_split_links_images_and_writes_one_label_file_each(tmp_path):
    paths = generate_dataset(tmp_path / "syn", tiny_config(3, 6))
    ann_file = paths.train_annotations
    ann = json.loads(ann_file.read_text())
    count = convert_split(ann_file, paths.train_images, tmp_path / "yolo", "train")
    assert count == len(ann["images"]) == 6
    labels = sorted((tmp_path / "yolo" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 6
    lines = [line for f in labels for line in f.read_text().splitlines()]
    assert len(lines) == sum(1 for a in ann["annotations"] if not a.get("iscrowd"))
    for line in lines:
        cls, *box = line.split()
        assert cls == "0" and all(0 <= float(v) <= 1 for v in box)
    with pytest.raises(FileNotFoundError, match="not found"):
        convert_split(ann_file, tmp_path / "nowhere", tmp_path / "yolo2", "train")


@pytest.mark.slow
def test_detector_training_runs_end_to_end(tmp_path):
    generate_dataset(tmp_path / "syn", tiny_config(4, 4))
    metrics = train_detector(
        tmp_path / "syn", tmp_path / "det", epochs=1, imgsz=64, batch=2, workers=0
    )
    assert (tmp_path / "det" / "best.pt").is_file()
    # The pipeline reads class 0 as the person class and checks its name.
    assert load_yolo(tmp_path / "det" / "best.pt").names == {0: "person"}
    assert (
        set(metrics) == {"mAP50-95", "mAP50"}
        and 0.0 <= metrics["mAP50-95"] <= metrics["mAP50"] <= 1.0
    )
    # Evaluation alone on the same val split reproduces the training run's numbers, and
    # writes a val-only YOLO dataset.
    again = evaluate_detector(
        tmp_path / "det" / "best.pt", tmp_path / "syn", tmp_path / "eval", imgsz=64, batch=2
    )
    assert again == pytest.approx(metrics, abs=1e-9)
    yaml = (tmp_path / "eval" / "dataset" / "data.yaml").read_text()
    assert "train: images/val\nval: images/val\n" in yaml
    assert not (tmp_path / "eval" / "dataset" / "images" / "train").exists()
    with pytest.raises(FileNotFoundError, match="detector weights not found"):
        evaluate_detector(tmp_path / "none.pt", tmp_path / "syn", tmp_path / "eval")
