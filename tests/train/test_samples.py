import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ccm.checkpoint import PoseConfig
from ccm.geometry import apply_affine, crop_to_heatmap, grid_to_image_matrix
from ccm.skeleton import COCO_KEYPOINTS, flip_permutation
from train.annotations import (
    AIC_IMAGE_ID_OFFSET,
    Instance,
    image_index,
    load_aic,
    load_coco,
    load_detections,
    load_negatives,
    load_pseudo_labels,
)
from train.augment import AugmentConfig
from train.mine_negatives import gt_boxes_from_coco, load_detection_records, mine_hard_negatives
from train.samples import TopDownDataset, build_stage_dataset
from train.synthetic.scenes import SceneConfig
from train.synthetic.writers import SyntheticConfig, generate_dataset

CONFIG = PoseConfig(arch="ccm_resnet50")  # input (256, 192), heatmaps (64, 48), unbiased, sigma 2
H, W = CONFIG.input_size
# Everything random at once, so one round trip checks how rotation, scale and flip compose.
FORCED = AugmentConfig(rotation_prob=1.0, flip_prob=1.0, half_body_prob=0.0, color_jitter=0.0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    scene = SceneConfig(min_size=(192, 256), max_size=(320, 400), max_people=3)
    config = SyntheticConfig(
        seed=3, num_train=8, num_val=0, num_aic=2, num_unlabeled=0, num_videos=0, scene=scene
    )
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), config)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def blank_image(path: Path, height: int = 240, width: int = 320) -> Path:
    cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))
    return path


def back_to_image(
    sample: dict, xy: torch.Tensor, perm: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop keypoints (K, 2) and weights of a sample -> image pixels, undoing the flip."""
    weights = sample["weights"]
    if sample["flip"]:
        xy, weights = xy[perm].clone(), weights[perm]
        xy[:, 0] = W - 1 - xy[:, 0]
    matrix = grid_to_image_matrix(
        sample["center"][None].double(), sample["scale"][None].double(), (H, W),
        sample["rotation"][None].double(),
    )  # fmt: skip
    return apply_affine(matrix, xy[None].double())[0], weights


# ----------------------------------------------------------------------------- loaders


def test_aic_mapping_joint_by_joint(tmp_path):
    # AIC order: r/l shoulder, elbow, wrist; r/l hip, knee, ankle; head top; neck.
    expected_coco = {
        0: 6,
        1: 8,
        2: 10,
        3: 5,
        4: 7,
        5: 9,
        6: 12,
        7: 14,
        8: 16,
        9: 11,
        10: 13,
        11: 15,
    }
    aic_codes = [1, 2, 3, 1, 2, 3, 2, 1, 3, 1, 1, 2, 1, 1]
    coco_codes = {1: 2, 2: 1, 3: 0}
    aic = [[100.0 + 10 * a, 50.0 + 7 * a, aic_codes[a]] for a in range(14)]
    ann = [{
        "image_id": "abc123", "url": "",
        "keypoint_annotations": {"human1": [v for j in aic for v in j]},
        "human_annotations": {"human1": [90.0, 40.0, 260.0, 200.0]},
    }]  # fmt: skip
    (inst,) = load_aic(write_json(tmp_path / "aic.json", ann), tmp_path / "img")
    assert inst.source == "aic" and inst.image_path == tmp_path / "img" / "abc123.jpg"
    assert inst.image_id == AIC_IMAGE_ID_OFFSET and inst.box == (90.0, 40.0, 260.0, 200.0)
    for a, c in expected_coco.items():
        v = coco_codes[aic_codes[a]]
        want = [aic[a][0], aic[a][1], v] if v else [0.0, 0.0, 0.0]
        assert inst.keypoints[c].tolist() == want, COCO_KEYPOINTS[c]
    assert np.all(inst.keypoints[:5] == 0)  # nose, eyes, ears: unlabelled
    # Head top (x 220) and neck (x 230) appear nowhere.
    assert not np.isin(inst.keypoints[:, 0], [220.0, 230.0]).any()

    ann[0]["keypoint_annotations"]["human1"][2] = 4
    with pytest.raises(ValueError, match="visibility codes"):
        load_aic(write_json(tmp_path / "bad.json", ann), tmp_path)


def test_coco_loader_counts_and_skips(synthetic, tmp_path):
    data = json.loads(synthetic.train_annotations.read_text())
    labelled = [sum(v > 0 for v in a["keypoints"][2::3]) for a in data["annotations"]]
    instances = load_coco(synthetic.train_annotations, synthetic.train_images)
    assert len(instances) == len(data["annotations"]) == sum(n >= 1 for n in labelled) > 5
    assert len(load_coco(synthetic.train_annotations, synthetic.train_images, 6)) == sum(
        n >= 6 for n in labelled
    )

    first, inst = data["annotations"][0], instances[0]
    x, y, w, h = first["bbox"]
    assert inst.box == pytest.approx((x, y, x + w, y + h)) and inst.image_id == first["image_id"]
    assert inst.keypoints.ravel().tolist() == first["keypoints"] and inst.image_path.is_file()

    extra = [
        dict(first, id=1, iscrowd=1),
        dict(first, id=2, bbox=[x, y, 0.0, h]),
        dict(
            first, id=3, bbox=[-50.0, y, 20.0, h]
        ),  # left of the image: nothing left after clipping
        dict(first, id=4, keypoints=[0] * 51),
        dict(first, id=5, category_id=2),
    ]
    copy = write_json(tmp_path / "coco.json", dict(data, annotations=data["annotations"] + extra))
    assert len(load_coco(copy, synthetic.train_images)) == len(instances)
    pseudo = load_pseudo_labels(copy, synthetic.train_images)
    assert len(pseudo) == len(instances) and {p.source for p in pseudo} == {"unlabeled"}

    with pytest.raises(ValueError, match="unknown image"):
        load_coco(
            write_json(tmp_path / "orphan.json", dict(data, images=[])), synthetic.train_images
        )
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_coco(tmp_path / "nowhere.json", synthetic.train_images)


def test_detections_and_mined_hard_negatives(tmp_path):
    images = [
        {"id": 7, "file_name": "a.png", "width": 320, "height": 240},
        {"id": 8, "file_name": "b.png"},
    ]
    truth = [{"id": 1, "image_id": 7, "bbox": [100, 50, 60, 150], "iscrowd": 0}]
    ann = write_json(tmp_path / "gt.json", {"images": images, "annotations": truth})
    dets = [
        {"image_id": 7, "category_id": 1, "bbox": [150, 60, 40, 100], "score": 0.9},  # overlaps
        {"image_id": 7, "category_id": 1, "bbox": [160.5, 60, 40, 100], "score": 0.8},  # beside it
        {"image_id": 7, "category_id": 1, "bbox": [200, 10, 40, 100], "score": 0.3},  # low score
        {"image_id": 8, "category_id": 1, "bbox": [100, 50, 60, 150], "score": 0.6},  # other image
        {"image_id": 8, "category_id": 3, "bbox": [0, 0, 60, 150], "score": 0.99},  # not a person
    ]
    det_file = write_json(tmp_path / "det.json", dets)
    index = image_index(ann, tmp_path)
    assert index == {7: tmp_path / "a.png", 8: tmp_path / "b.png"}

    mined = mine_hard_negatives(load_detection_records(det_file), gt_boxes_from_coco(ann), 0.5)
    assert mined == [dets[1], dets[3]]
    negatives = load_negatives(write_json(tmp_path / "neg.json", mined), index)
    assert [n.source for n in negatives] == ["negative"] * 2
    assert negatives[0].box == (160.5, 60.0, 200.5, 160.0) and not negatives[0].keypoints.any()

    found = load_detections(det_file, index, min_score=0.5)
    assert [d.score for d in found] == [0.9, 0.8, 0.6] and {d.source for d in found} == {
        "detection"
    }
    with pytest.raises(ValueError, match="image 8"):
        load_detections(det_file, {7: tmp_path / "a.png"})


# ----------------------------------------------------------------------------- samples


def test_targets_round_trip_to_annotated_keypoints(synthetic):
    instances = load_coco(synthetic.train_annotations, synthetic.train_images)
    codec = CONFIG.codec(method="dark")
    perm = flip_permutation(17)
    # Measured ~1e-5 px either way (DARK is exact on an unbiased Gaussian).
    for augment, tolerance in ((None, 0.01), (FORCED, 0.01)):
        dataset = TopDownDataset(instances, CONFIG, augment, seed=1)
        errors = []
        for i, inst in enumerate(instances):
            sample = dataset[i]
            assert sample["image"].shape == (3, H, W) and sample["heatmaps"].shape == (
                17,
                H // 4,
                W // 4,
            )
            assert bool(sample["flip"]) == (augment is not None)
            assert (sample["rotation"] != 0) == (augment is not None)
            xy, _ = codec.decode(sample["heatmaps"][None])
            image_xy, weights = back_to_image(sample, xy[0], perm)
            # DARK needs two pixels of map on each side; closer to the border it falls back to
            # the integer peak, which says nothing about the targets.
            hm = crop_to_heatmap(sample["keypoints"][:, :2], 4)
            interior = ((hm >= 2) & (hm <= torch.tensor([W // 4 - 3, H // 4 - 3]))).all(-1)
            interior = interior[perm] if sample["flip"] else interior
            use = (weights > 0) & interior
            assert torch.equal(
                weights > 0, torch.from_numpy(inst.keypoints[:, 2] > 0) & (weights > 0)
            )
            errors.append((image_xy - torch.from_numpy(inst.keypoints[:, :2]))[use].norm(dim=-1))
        errors = torch.cat(errors)
        assert errors.numel() > 60
        assert errors.max() < tolerance, (augment, errors.max())


def gaussian_dot(height: int, width: int, x: float, y: float, sigma: float = 2.0) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))


def test_crop_pixels_match_heatmap_peak(tmp_path):
    # A white dot at the left wrist, sub-pixel, in a black image; the crop's bright spot and
    # the target's peak must coincide however the crop was cut.
    x0, y0 = 141.3, 97.6
    dot = np.rint(255 * gaussian_dot(240, 320, x0, y0)).astype(np.uint8)
    path = tmp_path / "dot.png"
    cv2.imwrite(str(path), np.repeat(dot[..., None], 3, axis=-1))
    keypoints = np.zeros((17, 3))
    keypoints[9] = (x0, y0, 2)
    inst = Instance(path, 1, (80.0, 30.0, 200.0, 230.0), keypoints)
    codec = CONFIG.codec(method="dark")
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    for augment, epochs in ((None, 1), (FORCED, 4)):
        dataset = TopDownDataset([inst], CONFIG, augment)
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            sample = dataset[0]
            channel = 10 if sample["flip"] else 9  # a mirrored left wrist is a right wrist
            assert sample["weights"].tolist() == [float(k == channel) for k in range(17)]
            xy, _ = codec.decode(sample["heatmaps"][None])
            brightness = (sample["image"] * std + mean).sum(0)
            row, col = divmod(int(brightness.argmax()), W)
            window = brightness[row - 8 : row + 9, col - 8 : col + 9]
            ys, xs = torch.meshgrid(
                torch.arange(row - 8, row + 9), torch.arange(col - 8, col + 9), indexing="ij"
            )
            centroid = torch.stack(((window * xs).sum(), (window * ys).sum())) / window.sum()
            # Measured ~0.006 crop px; a half-pixel slip between pixels and targets would show.
            assert (centroid - xy[0, channel]).norm() < 0.05, (epoch, centroid, xy[0, channel])


def test_hard_negatives_and_unlabelled_joints_weights(tmp_path):
    path = blank_image(tmp_path / "blank.png")
    negative = Instance(path, 3, (50.0, 40.0, 150.0, 200.0), np.zeros((17, 3)), 0.8, "negative")
    sample = TopDownDataset([negative], CONFIG, AugmentConfig())[0]
    assert sample["heatmaps"].shape == (17, 64, 48) and not sample["heatmaps"].any()
    assert sample["weights"].tolist() == [1.0] * 17 and sample["score"] == pytest.approx(0.8)

    aic = [[120.0 + 3 * a, 60.0 + 9 * a, 1 if a % 4 else 2] for a in range(14)]
    ann = [
        {
            "image_id": "blank",
            "keypoint_annotations": {"h": sum(aic, [])},
            "human_annotations": {"h": [100, 50, 180, 200]},
        }
    ]
    (person,) = load_aic(write_json(tmp_path / "aic.json", ann), tmp_path)
    blank_image(tmp_path / "blank.jpg")
    weights = TopDownDataset([person], CONFIG)[0]["weights"]
    assert weights.tolist() == [0.0] * 5 + [1.0] * 12

    # A joint just outside the crop gets weight 0, though its Gaussian would still reach the map.
    keypoints = np.zeros((17, 3))
    # Box 120 x 240 -> region 225 x 300 about (120, 120): the crop's left edge is image x 7.5.
    keypoints[0] = (120.0, 120.0, 2)
    keypoints[1] = (7.0, 120.0, 2)
    keypoints[2] = (8.0, 120.0, 2)
    edge = Instance(path, 4, (60.0, 0.0, 180.0, 240.0), keypoints)
    assert TopDownDataset([edge], CONFIG)[0]["weights"][:3].tolist() == [1.0, 0.0, 1.0]


def crop_of(sample: dict) -> tuple:
    return tuple(sample[k].tolist() for k in ("scale", "rotation", "flip"))


def test_same_seed_epoch_index_gives_the_same_sample(synthetic):
    instances = load_coco(synthetic.train_annotations, synthetic.train_images)[:4]
    dataset = TopDownDataset(instances, CONFIG, AugmentConfig(), seed=5)
    first = [dataset[i] for i in range(4)]
    again = TopDownDataset(instances, CONFIG, AugmentConfig(), seed=5)
    for i in range(4):
        assert all(torch.equal(v, again[i][k]) for k, v in first[i].items())
    dataset.set_epoch(1)
    second = [dataset[i] for i in range(4)]
    for a, b in zip(first, second, strict=True):
        assert not torch.equal(a["image"], b["image"]) and crop_of(a) != crop_of(b)
    other_seed = TopDownDataset(instances, CONFIG, AugmentConfig(), seed=6)
    assert all(crop_of(other_seed[i]) != crop_of(first[i]) for i in range(4))

    # Workers (persistent, so set_epoch must reach them) give exactly the samples of the dataset.
    loader = DataLoader(dataset, batch_size=2, num_workers=2, persistent_workers=True)
    for epoch, expected in ((0, first), (1, second)):
        dataset.set_epoch(epoch)
        batches = list(loader)
        for key in ("image", "heatmaps", "center", "scale", "rotation", "flip"):
            got = torch.cat([b[key] for b in batches])
            assert torch.equal(got, torch.stack([s[key] for s in expected])), (epoch, key)


def test_half_body_crops_one_half(tmp_path):
    path = blank_image(tmp_path / "blank.png", 480, 320)
    keypoints = np.zeros((17, 3))
    keypoints[:, 0] = np.linspace(120, 200, 17)
    keypoints[:, 1] = np.linspace(40, 440, 17)  # ordered head to feet
    keypoints[:, 2] = 2
    inst = Instance(path, 1, (100.0, 20.0, 220.0, 460.0), keypoints)
    config = AugmentConfig(
        scale_factor=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=1.0, color_jitter=0.0
    )
    dataset = TopDownDataset([inst], CONFIG, config)
    halves = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        upper = bool(sample["center"][1] < 240)
        half = keypoints[:11] if upper else keypoints[11:]  # nose..wrists or hips..ankles
        halves.append(upper)
        # Joint extents are 50 x 250 (upper) and 25 x 125 (lower): grown to 3:4, padded by 1.5.
        extent = np.ptp(half[:, 1])
        assert sample["scale"].tolist() == pytest.approx(
            [extent * 0.75 * 1.5, extent * 1.5], rel=1e-6
        )
        assert sample["center"].tolist() == pytest.approx(half[:, :2].mean(0).tolist(), rel=1e-6)
    assert 0 < sum(halves) < len(halves)


def test_stage_mixing_by_letters(tmp_path):
    path = blank_image(tmp_path / "blank.png")

    def people(n: int, source: str) -> list[Instance]:
        return [
            Instance(path, i, (10.0, 10.0, 90.0, 200.0), np.zeros((17, 3)), 1.0, source)
            for i in range(n)
        ]

    sources = {
        "A": people(3, "aic"),
        "C": people(2, "coco"),
        "H": people(1, "negative"),
        "U": people(4, "unlabeled"),
    }
    assert len(build_stage_dataset(sources, "ACHU", CONFIG, AugmentConfig())) == 10
    stage = build_stage_dataset(sources, "CH", CONFIG, None, seed=3)
    assert [i.source for i in stage.instances] == ["coco", "coco", "negative"] and stage.seed == 3
    for letters in ("", "AX", "CC"):
        with pytest.raises(ValueError, match="stage letters"):
            build_stage_dataset(sources, letters, CONFIG, None)
    with pytest.raises(ValueError, match="needs sources"):
        build_stage_dataset({"C": sources["C"]}, "AC", CONFIG, None)


def test_missing_or_broken_image_is_named(tmp_path):
    missing = tmp_path / "gone" / "000000000042.jpg"
    dataset = TopDownDataset(
        [Instance(missing, 42, (0.0, 0.0, 10.0, 20.0), np.zeros((17, 3)))], CONFIG
    )
    with pytest.raises(FileNotFoundError, match="000000000042.jpg"):
        dataset[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        TopDownDataset([Instance(broken, 1, (0.0, 0.0, 10.0, 20.0), np.zeros((17, 3)))], CONFIG)[0]
