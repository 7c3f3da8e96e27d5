"""Renderer: pixels of a known pose drawn on a black frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccm.poses import FramePoses
from ccm.skeleton import COCO_KEYPOINT_COLORS, COCO_LIMB_COLORS, COCO_LIMBS
from realtime.render import RenderConfig, draw_poses, draw_stats, render_frame, track_color

H, W = 240, 320
LEFT, RIGHT, CENTRE = (0, 255, 0), (255, 128, 0), (51, 153, 255)
# (x, y) per COCO keypoint, in image pixels; limbs far enough apart not to touch each other.
XY = np.array(
    [
        (160, 40), (165, 35), (155, 35), (172, 38), (148, 38),  # face
        (190, 80), (130, 80), (220, 120), (100, 120), (240, 160), (80, 160),  # arms
        (180, 170), (140, 170), (185, 205), (135, 205), (190, 232), (130, 232),  # legs
    ],
    dtype=np.float32,
)  # fmt: skip
BOX = (60.0, 60.0, 260.0, 236.0)
TRACK_ID = 3
HIDDEN = 9  # left wrist


def make_poses(
    xy: np.ndarray = XY,
    hidden_score: float = 0.1,
    track_id: int = TRACK_ID,
    box: tuple[float, ...] = BOX,
    scale: float = 1.0,
) -> FramePoses:
    kpts = np.concatenate([xy * scale, np.full((17, 1), 0.9, np.float32)], axis=1)
    kpts[HIDDEN, 2] = hidden_score
    return FramePoses(
        frame=0,
        pts=0.0,
        boxes=np.array([box], np.float32) * scale,
        scores=np.array([0.95], np.float32),
        keypoints=kpts[None],
        track_ids=np.array([track_id]),
    )


def black(h: int = H, w: int = W) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def pixel(img: np.ndarray, x: float, y: float) -> tuple[int, ...]:
    return tuple(int(v) for v in img[round(y), round(x)])


def midpoint(a: int, b: int) -> tuple[float, float]:
    return tuple((XY[a] + XY[b]) / 2)


def test_limb_midpoints_have_the_limb_colour_and_joints_their_colour() -> None:
    out = render_frame(black(), make_poses(), config=RenderConfig(draw_track_ids=False))
    for limb, colour in [((5, 7), LEFT), ((6, 8), RIGHT), ((11, 12), CENTRE), ((16, 14), RIGHT)]:
        assert COCO_LIMB_COLORS[COCO_LIMBS.index(limb)] == colour
        assert pixel(out, *midpoint(*limb)) == colour, limb
    for j, colour in [(0, CENTRE), (7, LEFT), (8, RIGHT), (15, LEFT)]:
        assert COCO_KEYPOINT_COLORS[j] == colour
        assert pixel(out, *XY[j]) == colour, j
    assert pixel(out, 20, 20) == (0, 0, 0)  # nothing drawn away from the person


def test_low_score_joint_and_its_limb_are_hidden() -> None:
    config = RenderConfig(keypoint_thr=0.3, draw_track_ids=False)
    out = render_frame(black(), make_poses(hidden_score=0.1), config=config)
    x, y = XY[HIDDEN].astype(int)
    assert not out[y - 4 : y + 5, x - 4 : x + 5].any()  # the wrist's whole neighbourhood
    assert pixel(out, *midpoint(7, 9)) == (0, 0, 0)  # forearm gone
    assert pixel(out, *midpoint(5, 7)) == LEFT  # upper arm still there
    # The same pose with a confident wrist draws both: the test above can fail.
    shown = render_frame(black(), make_poses(hidden_score=0.9), config=config)
    assert pixel(shown, *XY[HIDDEN]) == LEFT
    assert pixel(shown, *midpoint(7, 9)) == LEFT
    # A score equal to the threshold is hidden too (strictly greater is shown).
    at_thr = render_frame(black(), make_poses(hidden_score=0.3), config=config)
    assert pixel(at_thr, *XY[HIDDEN]) == (0, 0, 0)


def test_track_id_label_sits_on_the_box_corner_in_the_track_colour() -> None:
    with_id = render_frame(black(), make_poses())
    without = render_frame(black(), make_poses(), config=RenderConfig(draw_track_ids=False))
    rows, cols = np.nonzero((with_id != without).any(-1))
    assert rows.size > 50
    x1, y1 = BOX[:2]
    assert y1 - 20 <= rows.min() and rows.max() < y1  # a tag just above the box's top edge
    assert x1 <= cols.min() and cols.max() < x1 + 40
    label = with_id[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].reshape(-1, 3)
    colour = track_color(TRACK_ID)
    assert (label == colour).all(-1).mean() > 0.5  # mostly the fill
    assert (label != colour).any(-1).sum() > 5  # plus the text

    # Untracked people (id -1) get no label.
    untracked = render_frame(black(), make_poses(track_id=-1))
    untracked_plain = render_frame(black(), make_poses(track_id=-1), config=RenderConfig())
    assert np.array_equal(untracked, untracked_plain)
    assert np.array_equal(untracked, without)


def test_label_moves_inside_the_frame_for_a_box_at_the_top_edge() -> None:
    poses = make_poses(box=(60.0, 0.0, 260.0, 236.0))
    with_id = render_frame(black(), poses)
    without = render_frame(black(), poses, config=RenderConfig(draw_track_ids=False))
    rows, cols = np.nonzero((with_id != without).any(-1))
    assert rows.min() == 0 and rows.max() < 20 and cols.min() == 60


def test_track_colours_are_stable_and_distinct() -> None:
    colours = [track_color(i) for i in range(12)]
    assert colours == [track_color(i) for i in range(12)]
    assert len(set(colours)) == 12
    assert track_color(0) == (255, 77, 77)  # hue 0, saturation 0.7, value 1
    assert track_color(-1) == (160, 160, 160)


def test_boxes_are_drawn_in_the_track_colour_when_asked() -> None:
    # scale 2: 2 px box lines, whose centre pixels LINE_AA paints in the full colour
    plain = render_frame(black(), make_poses(), config=RenderConfig(draw_track_ids=False, scale=2))
    boxed = render_frame(
        black(),
        make_poses(),
        config=RenderConfig(draw_track_ids=False, draw_boxes=True, scale=2),
    )
    x1, y1, x2, y2 = (int(v) for v in BOX)
    assert pixel(boxed, (x1 + x2) / 2, y2) == track_color(TRACK_ID)  # bottom edge
    assert pixel(boxed, x1, (y1 + y2) / 2) == track_color(TRACK_ID)  # left edge
    assert pixel(plain, x1, (y1 + y2) / 2) == (0, 0, 0)


def test_stats_overlay_changes_only_its_corner_and_empty_poses_draw_nothing_else() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    before = frame.copy()
    empty = FramePoses.empty(frame=0, pts=0.0)

    plain = render_frame(frame, empty)
    assert np.array_equal(plain, frame) and plain is not frame

    out = render_frame(frame, empty, fps=29.87, latency_ms=41.2)
    assert np.array_equal(frame, before)  # render_frame draws on a copy
    panel = draw_stats(frame.copy(), 29.87, 41.2)
    assert panel is not None
    x1, y1, x2, y2 = panel
    assert (x1, y1) == (2, 2) and x2 < W // 2 and y2 < H // 8  # a top-left corner panel
    outside = np.ones((H, W), bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], frame[outside])
    assert (out[y1:y2, x1:x2] != frame[y1:y2, x1:x2]).any(-1).mean() > 0.9  # darkened + text
    # the text: bright pixels in a panel darkened to <= 85
    assert (out[y1:y2, x1:x2] > 200).all(-1).sum() > 20

    other = render_frame(frame, empty, fps=12.5, latency_ms=41.2)
    assert not np.array_equal(out[y1:y2, x1:x2], other[y1:y2, x1:x2])
    assert draw_stats(frame.copy(), None, None) is None


def test_line_width_grows_with_the_frame() -> None:
    def hip_line_rows(scale: int) -> int:
        out = render_frame(
            black(H * scale, W * scale),
            make_poses(scale=scale),
            config=RenderConfig(draw_track_ids=False),
        )
        x, y = (round(v * scale) for v in midpoint(11, 12))
        column = out[y - 10 * scale : y + 10 * scale, x]
        return int((column == CENTRE).all(-1).sum())

    # 240 px -> 2 px limbs, 720 px -> 4 px limbs (3 and 5 fully covered rows with LINE_AA).
    assert (hip_line_rows(1), hip_line_rows(3)) == (3, 5)


def test_joints_are_centred_on_pixel_centres() -> None:
    def row_profile(x: float) -> np.ndarray:
        kpts = np.zeros((1, 17, 3), np.float32)
        kpts[0, 0] = (x, 50.0, 1.0)
        poses = FramePoses(0, 0.0, np.zeros((1, 4), np.float32), np.ones(1), kpts, np.array([-1]))
        return render_frame(black(100, 200), poses)[50, :, 2].astype(int)

    on = row_profile(100.0)  # symmetric about column 100
    np.testing.assert_allclose(on[100 - 6 : 100], on[101 : 101 + 6][::-1], atol=3)
    assert on[100] == 255
    half = row_profile(100.5)  # symmetric about 100.5: columns 100 and 101 mirror each other
    np.testing.assert_allclose(half[95:101], half[101:107][::-1], atol=4)


def test_torch_and_numpy_poses_render_the_same() -> None:
    poses = make_poses()
    as_torch = poses.to("cpu")
    assert isinstance(as_torch.keypoints, torch.Tensor)
    assert np.array_equal(render_frame(black(), poses), render_frame(black(), as_torch))


def test_bad_frames_and_skeletons_are_refused() -> None:
    poses = make_poses()
    with pytest.raises(ValueError, match=r"frame must be an \(H, W, 3\) uint8 RGB array"):
        render_frame(black().astype(np.float32), poses)
    with pytest.raises(ValueError, match=r"frame must be an \(H, W, 3\) uint8 RGB array"):
        render_frame(black()[..., 0], poses)
    with pytest.raises(ValueError, match="C-contiguous, writeable"):
        draw_poses(black()[:, ::-1], poses)
    five = FramePoses(0, 0.0, np.zeros((1, 4)), np.ones(1), np.ones((1, 5, 3)), np.array([0]))
    with pytest.raises(ValueError, match="does not fit poses with 5 keypoints"):
        render_frame(black(), five)
    with pytest.raises(ValueError, match="19 limbs but 2 limb colours"):
        RenderConfig(limb_colors=((0, 0, 0), (1, 1, 1)))
