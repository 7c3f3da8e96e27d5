"""The synthetic dataset: COCO, AIC, detection and video files, and what they say."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ccm.skeleton import AIC_TO_COCO, AIC_TO_COCO_VISIBILITY, COCO_KEYPOINTS, COCO_LIMBS
from train.synthetic.__main__ import main
from train.synthetic.distractors import KINDS
from train.synthetic.drawing import Canvas
from train.synthetic.figures import (
    HEAD_TOP,
    L_THIGH,
    L_UPPER_ARM,
    NECK,
    PARTS_PER_FIGURE,
    POSE_LIMITS_DEG,
    R_THIGH,
    R_UPPER_ARM,
    Figure,
    Pose,
    Proportions,
    body_points,
    project_figure,
)
from train.synthetic.sampling import sample_appearance, sample_pose
from train.synthetic.scenes import (
    SceneConfig,
    Split,
    annotated,
    image_rng,
    keypoint_list,
    render_image,
    render_scene,
    rounded,
)
from train.synthetic.videos import MOTIONS, VideoConfig, generate_video, sample_tracks
from train.synthetic.writers import SyntheticConfig, generate_dataset

SEED = 7
VIDEO = VideoConfig(width=192, height=144, fps=12, seconds=2.0, num_people=3)
CONFIG = SyntheticConfig(
    seed=SEED, num_train=24, num_val=8, num_aic=8, num_unlabeled=4, num_videos=1, video=VIDEO
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), CONFIG)


def _kpts(ann: dict) -> np.ndarray:
    return np.asarray(ann["keypoints"], np.float64).reshape(17, 3)


def _iou(a, b) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # numpy 2 copy keyword
@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_annotations_are_consistent(dataset, split):
    path = dataset.train_annotations if split == "train" else dataset.val_annotations
    coco = COCO(str(path))
    cat = coco.loadCats(1)[0]
    assert cat["name"] == "person" and tuple(cat["keypoints"]) == COCO_KEYPOINTS
    assert cat["skeleton"] == [[a + 1, b + 1] for a, b in COCO_LIMBS]
    images_dir = dataset.train_images if split == "train" else dataset.val_images
    assert len(coco.getImgIds()) == (CONFIG.num_train if split == "train" else CONFIG.num_val)
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(str(images_dir / img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3)
        assert 192 <= img["height"] <= 480 and 256 <= img["width"] <= 640
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= len(coco.getImgIds())  # about 2 people per image on average
    assert len({a["id"] for a in anns}) == len(anns)
    for ann in anns:
        img = coco.imgs[ann["image_id"]]
        w_img, h_img = img["width"], img["height"]
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0
        k = _kpts(ann)
        assert set(np.unique(k[:, 2])) <= {0, 1, 2}
        labelled = k[:, 2] > 0
        assert ann["num_keypoints"] == int(labelled.sum())
        assert np.all(k[labelled, 0] >= 0) and np.all(k[labelled, 0] <= w_img - 1)
        assert np.all(k[labelled, 1] >= 0) and np.all(k[labelled, 1] <= h_img - 1)
        assert np.all(k[~labelled, :2] == 0)
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= w_img + 1e-9 and y + h <= h_img + 1e-9
        vis = k[k[:, 2] == 2]
        assert np.all((vis[:, 0] >= x) & (vis[:, 0] <= x + w))
        assert np.all((vis[:, 1] >= y) & (vis[:, 1] <= y + h))
        mask = coco.annToMask(ann)
        assert mask.sum() == ann["area"] > 0
        assert ann["area"] <= w * h
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        # The box is tight: it spans exactly the visible mask (pixel j covers j +- 0.5).
        assert x == max(cols[0] - 0.5, 0) and x + w == pytest.approx(cols[-1] + 0.5, abs=1e-6)
        assert y == max(rows[0] - 0.5, 0) and y + h == pytest.approx(rows[-1] + 0.5, abs=1e-6)


def test_occlusion_and_truncation_produce_v1_and_v0(dataset):
    coco = COCO(str(dataset.train_annotations))
    k = np.stack([_kpts(a) for a in coco.loadAnns(coco.getAnnIds())])
    counts = [int((k[..., 2] == v).sum()) for v in (0, 1, 2)]
    assert counts[2] > counts[1] > 0 and counts[0] > 0
    # Some hidden keypoints sit under another figure (not only self-occlusion).
    hidden_by_other = 0
    for index in range(CONFIG.num_train):
        scene = render_image(SEED, Split.TRAIN, index, CONFIG.scene)
        for person in annotated(scene, CONFIG.scene):
            for x, y, v in person.keypoints:
                if v == 1:
                    top = scene.labels[int(math.floor(y + 0.5)), int(math.floor(x + 0.5))]
                    hidden_by_other += top // PARTS_PER_FIGURE - 1 not in (person.figure, -1)
    assert hidden_by_other > 0


def test_ground_truth_scores_perfect_keypoint_ap(dataset):
    coco = COCO(str(dataset.val_annotations))
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in coco.loadAnns(coco.getAnnIds())
        if a["num_keypoints"] > 0
    ]
    ev = COCOeval(coco, coco.loadRes(results), "keypoints")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0, abs=1e-12)


def test_visibility_follows_occlusion_and_the_border():
    background = np.full((200, 300, 3), 128, np.float32)
    look = sample_appearance(np.random.default_rng(0))

    def standing(x: float) -> Figure:
        return Figure(Pose(), Proportions(), look, 150.0, (x, 110.0))

    # The second figure stands 37.5 px right of the first, over its left arm; the third is cut
    # by the right border through its hips (figure's left side outside the image).
    back, front, cut = render_scene(
        background, [standing(100), standing(137.5), standing(290)]
    ).people
    np.testing.assert_array_equal(
        back.keypoints[:, 2], [2, 2, 2, 2, 2, 1, 2, 1, 2, 1, 2, 2, 2, 2, 2, 2, 2]
    )
    np.testing.assert_array_equal(front.keypoints[:, 2], [2] * 17)
    np.testing.assert_array_equal(
        cut.keypoints[:, 2], [2, 2, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2]
    )
    np.testing.assert_array_equal(cut.keypoints[cut.keypoints[:, 2] == 0, :2], 0.0)
    assert back.visible_area < back.full_area and front.visible_area == front.full_area
    assert cut.bbox[0] + cut.bbox[2] == 299.5  # the last image column ends at x = W - 0.5
    # A figure exactly behind another is fully hidden: labelled occluded, no visible box.
    hidden, _ = render_scene(background, [standing(100), standing(100)]).people
    assert hidden.bbox is None and hidden.visible_area == 0
    np.testing.assert_array_equal(hidden.keypoints[:, 2], [1] * 17)


def test_frontal_figure_geometry():
    props, h = Proportions(), 200.0
    front = project_figure(
        Figure(Pose(), props, sample_appearance(np.random.default_rng(0)), h, (50.0, 60.0))
    )
    xy = front.xyd[:, :2]
    np.testing.assert_allclose(xy[11:13].mean(0), (50.0, 60.0), atol=1e-9)  # hips centre on pelvis
    np.testing.assert_allclose(np.linalg.norm(xy[5] - xy[7]), props.upper_arm * h, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(xy[7] - xy[9]), props.forearm * h, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(xy[11] - xy[13]), props.thigh * h, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(xy[13] - xy[15]), props.shin * h, rtol=1e-9)
    np.testing.assert_allclose(xy[5, 0] - xy[6, 0], 2 * props.shoulder_half * h, rtol=1e-9)
    # Facing the camera: the person's left is on the image right; head top, neck, shoulders, hips,
    # knees, ankles go down the image in that order and all face points face the camera.
    assert xy[1, 0] > xy[2, 0] and xy[3, 0] > xy[4, 0] and xy[15, 0] > xy[16, 0]
    ys = [
        xy[HEAD_TOP, 1],
        xy[1, 1],
        xy[0, 1],
        xy[NECK, 1],
        xy[5, 1],
        xy[11, 1],
        xy[13, 1],
        xy[15, 1],
    ]
    assert ys == sorted(ys)
    assert front.face_toward.all()
    back = project_figure(
        Figure(
            Pose(yaw=math.pi), props, sample_appearance(np.random.default_rng(0)), h, (50.0, 60.0)
        )
    )
    assert back.xyd[5, 0] < back.xyd[6, 0]  # seen from behind, the left is on the image left
    assert not back.face_toward[:3].any()  # eyes and nose face away
    side = project_figure(
        Figure(
            Pose(yaw=math.pi / 2),
            props,
            sample_appearance(np.random.default_rng(0)),
            h,
            (50.0, 60.0),
        )
    )
    assert side.xyd[5, 0] == pytest.approx(side.xyd[6, 0], abs=1e-9)
    assert side.xyd[5, 2] > side.xyd[6, 2]  # facing image right, the left side is the far side
    assert side.xyd[0, 0] > side.xyd[HEAD_TOP, 0]  # the nose points the way the body faces


def test_sampled_poses_respect_joint_limits_and_bone_lengths():
    rng = np.random.default_rng(3)
    props = Proportions()
    bones = [
        (5, 7, props.upper_arm),
        (7, 9, props.forearm),
        (11, 13, props.thigh),
        (13, 15, props.shin),
    ]
    for _ in range(200):
        pose = sample_pose(rng)
        for name, (lo, hi) in POSE_LIMITS_DEG.items():
            values = np.degrees(np.atleast_1d(getattr(pose, name)))
            assert np.all(values >= lo - 1e-9) and np.all(values <= hi + 1e-9), name
        assert abs(math.degrees(pose.yaw)) <= 120.0
        pts, _ = body_points(pose, props)
        for a, b, length in bones:
            for side in (0, 1):
                assert np.linalg.norm(pts[a + side] - pts[b + side]) == pytest.approx(
                    length, rel=1e-9
                )


def test_left_side_is_lighter_than_right_side(dataset):
    """The left/right cue: left sleeve and trouser leg are lighter than the right ones."""
    compared = 0
    for index in range(CONFIG.num_train):
        scene = render_image(SEED, Split.TRAIN, index, CONFIG.scene)
        gray = scene.image.astype(np.float64).mean(-1)
        for fig in range(len(scene.figures)):
            base = (fig + 1) * PARTS_PER_FIGURE
            for left, right in ((L_UPPER_ARM, R_UPPER_ARM), (L_THIGH, R_THIGH)):
                lmask, rmask = scene.labels == base + left, scene.labels == base + right
                if lmask.sum() >= 40 and rmask.sum() >= 40:
                    assert gray[lmask].mean() > gray[rmask].mean() + 5
                    compared += 1
    assert compared >= 20


def test_aic_split_maps_back_to_the_drawn_joints(dataset):
    entries = json.loads(dataset.aic_annotations.read_text())
    assert len(entries) == CONFIG.num_aic
    humans = 0
    for index, entry in enumerate(entries):
        assert (dataset.aic_images / f"{entry['image_id']}.jpg").is_file()
        scene = render_image(SEED, Split.AIC_TRAIN, index, CONFIG.scene)
        people = annotated(scene, CONFIG.scene)
        assert len(entry["keypoint_annotations"]) == len(entry["human_annotations"]) == len(people)
        for k, person in enumerate(people):
            aic = np.asarray(entry["keypoint_annotations"][f"human{k + 1}"]).reshape(14, 3)
            drawn = project_figure(scene.figures[person.figure]).xyd[:, :2]
            assert set(np.unique(aic[:, 2])) <= {1, 2, 3}
            np.testing.assert_array_equal(aic[aic[:, 2] == 3, :2], 0.0)
            for a, c in AIC_TO_COCO:
                assert AIC_TO_COCO_VISIBILITY[int(aic[a, 2])] == person.keypoints[c, 2]
                if aic[a, 2] != 3:
                    np.testing.assert_allclose(aic[a, :2], drawn[c], atol=0.005 + 1e-9)
            for a, point in ((12, HEAD_TOP), (13, NECK)):
                if aic[a, 2] != 3:
                    np.testing.assert_allclose(aic[a, :2], drawn[point], atol=0.005 + 1e-9)
            x1, y1, x2, y2 = entry["human_annotations"][f"human{k + 1}"]
            np.testing.assert_allclose((x1, y1, x2 - x1, y2 - y1), person.bbox, atol=0.006)
            humans += 1
    assert humans >= CONFIG.num_aic


def test_unlabeled_list_matches_its_images(dataset):
    images = json.loads(dataset.unlabeled_list.read_text())
    assert len(images) == CONFIG.num_unlabeled
    labelled = {
        i["id"]
        for p in (dataset.train_annotations, dataset.val_annotations)
        for i in json.loads(p.read_text())["images"]
    }
    assert not labelled & {i["id"] for i in images}
    for img in images:
        pixels = cv2.imread(str(dataset.unlabeled_images / img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3)


@pytest.mark.parametrize("split", ["train", "val"])
def test_detections_hold_jittered_true_and_false_positives(dataset, split):
    ann_path = dataset.train_annotations if split == "train" else dataset.val_annotations
    coco = json.loads(ann_path.read_text())
    dets = json.loads(
        (dataset.train_detections if split == "train" else dataset.val_detections).read_text()
    )
    gt: dict[int, list] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        gt[ann["image_id"]].append(ann["bbox"])
    true_pos, false_pos = [], []
    for det in dets:
        assert det["category_id"] == 1 and 0 < det["score"] < 1
        best = max((_iou(det["bbox"], g) for g in gt[det["image_id"]]), default=0.0)
        assert best > 0.5 or best == 0.0, best
        (true_pos if best > 0.5 else false_pos).append(det)
    matched = {
        (d["image_id"], tuple(g))
        for d in true_pos
        for g in gt[d["image_id"]]
        if _iou(d["bbox"], g) > 0.5
    }
    assert len(matched) >= 0.8 * len(coco["annotations"])
    assert any(
        _iou(d["bbox"], g) < 0.999
        for d in true_pos
        for g in gt[d["image_id"]]
        if _iou(d["bbox"], g) > 0.5
    )
    assert len(false_pos) >= 3 and any(d["score"] >= 0.5 for d in false_pos)


def test_video_decodes_with_smooth_ground_truth(dataset):
    (paths,) = dataset.videos
    gt = json.loads(paths.ground_truth.read_text())
    with av.open(str(paths.video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == VIDEO.fps
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == gt["num_frames"] == len(gt["frames"]) == 24
    assert frames[0].shape == (VIDEO.height, VIDEO.width, 3)
    # Every entry counts its visible pixels inside its tight box; most are annotated.
    entries = [p for f in gt["frames"] for p in f]
    for p in entries:
        w, h = p["bbox"][2:]
        assert isinstance(p["annotated"], bool) and 4 <= p["area"] <= w * h + 1e-6
    assert sum(p["annotated"] for p in entries) >= 0.8 * len(entries)
    tracks = {t["track_id"]: t for t in gt["tracks"]}
    assert sorted(tracks) == [0, 1, 2]
    hips_x = {}
    for tid, track in tracks.items():
        k = np.full((len(gt["frames"]), 17, 3), np.nan)
        for t, people in enumerate(gt["frames"]):
            for p in people:
                if p["track_id"] == tid:
                    k[t] = _kpts(p)
        seen = k[..., 2] > 0
        both_hips = seen[:, 11] & seen[:, 12]
        assert both_hips.sum() >= 12
        # The hip midpoint follows the stated straight line to the 0.01 px output grid.
        t = np.arange(len(k))[:, None]
        line = np.asarray(track["start"]) + t * np.asarray(track["velocity"])
        np.testing.assert_allclose(k[both_hips, 11:13, :2].mean(1), line[both_hips], atol=0.011)
        hips_x[tid] = np.where(both_hips, k[:, 11:13, 0].mean(1), np.nan)
        # Keypoints move smoothly: a walker's joints stay under 3 body heights per second and
        # 30 body heights per second squared (measured: 2.5 and 21).
        step = np.linalg.norm(np.diff(k[..., :2], axis=0), axis=-1)[seen[1:] & seen[:-1]]
        accel = np.linalg.norm(k[2:, :, :2] - 2 * k[1:-1, :, :2] + k[:-2, :, :2], axis=-1)
        accel = accel[seen[2:] & seen[1:-1] & seen[:-2]]
        h, fps = track["height"], gt["fps"]
        assert step.max() * fps < 3.0 * h and accel.max() * fps**2 < 30.0 * h
    # Tracks 0 and 1 cross: their order along x flips, and one hides part of the other.
    order = np.sign(hips_x[0] - hips_x[1])
    assert order[0] == -1 and order[-1] == 1
    hidden = sum(
        int(_kpts(p)[:, 2].tolist().count(1))
        for f in gt["frames"][8:16]
        for p in f
        if p["track_id"] == 0
    )
    assert hidden > 0


def test_same_seed_same_bytes_other_seed_differs(tmp_path, capsys):
    small = dict(num_train=3, num_val=2, num_aic=2, num_unlabeled=1, num_videos=0)
    args = ["--train", "3", "--val", "2", "--aic", "2", "--unlabeled", "1", "--videos", "0"]
    main(["--out", str(tmp_path / "a"), "--seed", "5", *args])
    assert "wrote 3 train + 2 val images" in capsys.readouterr().out
    generate_dataset(tmp_path / "b", SyntheticConfig(seed=5, **small))
    generate_dataset(tmp_path / "c", SyntheticConfig(seed=6, **small))
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 3 + 2 + 2 + 1 + 4 + 2  # images, annotation files, detection files
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    rel = Path("annotations/person_keypoints_train.json")
    assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()


def test_default_scenes_are_those_of_earlier_versions():
    """Seeded output that tests and the bundled clip rely on: without distractors the scenes are
    pixel for pixel those of the generator before they existed (numpy 2 / OpenCV 4 here)."""
    digest = hashlib.sha256()
    for split in (Split.TRAIN, Split.VAL):
        for index in range(4):
            scene = render_image(SEED, split, index, SceneConfig())
            digest.update(scene.image.tobytes())
            people = annotated(scene, SceneConfig())
            rows = [[keypoint_list(p.keypoints), rounded(p.bbox)] for p in people]
            digest.update(json.dumps(rows).encode())
    assert digest.hexdigest() == "525ed1c5c104fc6b524a8d91e2d8e2be67525da37a7b4882b2a0f528e99e7d0e"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_distractor_stays_inside_its_extent(kind):
    rng = np.random.default_rng(5)
    for _ in range(20):
        canvas = Canvas(np.full((400, 400, 3), 128, np.float32))
        canvas.drawn[:] = False
        prop = KINDS[kind](rng, 150.0)
        mask = prop.paint(canvas, 200.0, 200.0)
        cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
        x0, y0, x1, y1 = np.asarray(prop.extent) + 200.0
        # Placement keeps props off the figures by their extents: every painted pixel centre
        # lies inside.
        assert x0 <= cols[0] and cols[-1] <= x1 and y0 <= rows[0] and rows[-1] <= y1, kind
        assert rows[-1] - rows[0] + 1 >= 0.45 * 150  # about as tall as a figure (legs: half)


def test_distractors_change_pixels_never_annotations(dataset, tmp_path):
    busy = replace(CONFIG.scene, max_distractors=3)
    with_props = changed = 0
    for index in range(CONFIG.num_train):
        plain = render_image(SEED, Split.TRAIN, index, CONFIG.scene)
        scene = render_image(SEED, Split.TRAIN, index, busy)
        np.testing.assert_array_equal(scene.labels, plain.labels)
        for a, b in zip(scene.people, plain.people, strict=True):
            np.testing.assert_array_equal(a.keypoints, b.keypoints)
            np.testing.assert_array_equal(a.aic_keypoints, b.aic_keypoints)
            assert (a.bbox, a.visible_area, a.full_area) == (b.bbox, b.visible_area, b.full_area)
        props = scene.distractors[len(plain.distractors) :]
        assert scene.distractors[: len(plain.distractors)] == plain.distractors
        diff = (scene.image != plain.image).any(-1)
        inside = np.zeros_like(diff)
        for x, y, w, h in props:
            inside[int(y) : math.ceil(y + h), int(x) : math.ceil(x + w)] = True
        assert not diff[plain.labels > 0].any()  # drawn behind the figures, never over them
        assert diff.any() == bool(props)
        assert (diff & inside).sum() >= 0.95 * diff.sum()  # the rest: camera blur at the edges
        with_props += bool(props)
        changed += int(diff.sum())
    assert with_props == 15 and changed == 97840
    # Written to disk through the CLI: the same images and annotations, the setting in `info`.
    args = ["--train", "24", "--val", "8", "--aic", "0", "--unlabeled", "0", "--videos", "0"]
    main(["--out", str(tmp_path), "--seed", str(SEED), *args, "--distractors", "3"])
    for split in ("train", "val"):
        ours = json.loads((tmp_path / f"annotations/person_keypoints_{split}.json").read_text())
        theirs = json.loads(getattr(dataset, f"{split}_annotations").read_text())
        assert ours["info"] == theirs["info"] | {"max_distractors": 3}
        for key in ("images", "annotations", "categories"):
            assert ours[key] == theirs[key], key


def _motion_keypoints(motion: str, fps: int = 15, seconds: float = 4.0, seed: int = 3):
    """True COCO keypoints (F, P, 17, 2) of a clip's figures, without rendering, and the tracks."""
    cfg = VideoConfig(width=640, height=360, fps=fps, seconds=seconds, num_people=3, motion=motion)
    tracks = sample_tracks(image_rng(seed, Split.VIDEO, 0), cfg)
    frames = range(cfg.num_frames)
    kpts = np.stack([[project_figure(t.at(f)).xyd[:17, :2] for t in tracks] for f in frames])
    return kpts, tracks


def test_walk_tracks_are_unchanged_by_the_new_motions():
    cfg = VideoConfig(num_people=3)
    tracks = sample_tracks(image_rng(4, Split.VIDEO, 0), cfg)
    assert all(t.yaw_rate == 0 and t.phase_rate is None and not t.swing for t in tracks)


def test_each_motion_moves_as_it_says():
    k = {m: _motion_keypoints(m) for m in MOTIONS}
    fps = 15

    def distal_accel(kpts, tracks):  # wrists and ankles, body heights per second^2
        a = np.linalg.norm(kpts[2:] - 2 * kpts[1:-1] + kpts[:-2], axis=-1) * fps**2
        return (a[..., [9, 10, 15, 16]] / np.array([t.height for t in tracks])[:, None]).mean()

    walk, swing = distal_accel(*k["walk"]), distal_accel(*k["swing"])
    assert swing > 4 * walk
    # Turning figures spin: their shoulders swap sides along x, at least once per track.
    kpts, tracks = k["turn"]
    side = np.sign(kpts[:, :, 5, 0] - kpts[:, :, 6, 0])  # (F, P)
    assert all(abs(t.yaw_rate) * fps >= math.pi - 1e-9 for t in tracks)
    assert ((side[1:] != side[:-1]).sum(0) >= 1).all()
    # Entering figures start and end outside the frame.
    kpts, tracks = k["enter"]
    hips_x = kpts[:, :, 11:13, 0].mean(-1)  # (F, P)
    outside = (hips_x < -0.1 * 640) | (hips_x > 1.1 * 640)
    assert outside.any(0).all() and (~outside).any(0).all()
    # Tracks 0 and 1 still cross in every motion.
    for motion, (kpts, _) in k.items():
        order = np.sign(kpts[:, 0, 11, 0] - kpts[:, 1, 11, 0])
        assert order[0] != order[-1], motion


def test_entering_figures_are_absent_from_the_ground_truth_until_they_show(tmp_path):
    cfg = VideoConfig(width=160, height=96, fps=10, seconds=3.0, num_people=3, motion="enter")
    paths = generate_video(tmp_path / "enter.mp4", cfg, seed=3)
    gt = json.loads(paths.ground_truth.read_text())
    assert gt["motion"] == "enter" and len(gt["frames"]) == 30
    counts = [len(people) for people in gt["frames"]]
    assert min(counts) < 3 and max(counts) >= 2
    assert {"yaw_rate"} <= set(gt["tracks"][0])


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="motion must be one of"):
        VideoConfig(motion="dance")
    with pytest.raises(ValueError, match="even video size"):
        VideoConfig(width=321)
    with pytest.raises(ValueError, match="fps"):
        VideoConfig(fps=0)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        SceneConfig(min_size=(500, 256))
    with pytest.raises(ValueError, match="max_distractors >= 0"):
        SceneConfig(max_distractors=-1)
    with pytest.raises(ValueError, match="counts"):
        SyntheticConfig(num_train=-1)
