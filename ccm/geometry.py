"""Boxes, crop regions and the maps between image, crop and heatmap pixels.

One convention everywhere: pixel (row i, column j) has its centre at (x=j, y=i), in image, crop and
heatmap space alike. A region is a centre and a size (w, h) in image pixels; a grid of (H, W) pixels
laid over it covers it edge to edge, so the grid's pixel extent [-0.5, W - 0.5] spans the region's
[cx - w/2, cx + w/2]. The crop (H_in, W_in) and the heatmap (H_in/s, W_in/s) are two grids over the
same region, so one formula maps either to the image, and crop <-> heatmap is consistent with the
network's stride: x_crop = s * (x_hm + 0.5) - 0.5.

Models trained elsewhere learned other heatmap <-> crop maps (`HEATMAP_MAPPINGS`);
`to_pixel_center_heatmap` moves their decoded heatmap coordinates into this convention.

All functions are batched over people: centre (N, 2), scale (N, 2), points (N, K, 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PADDING = 1.25
# How a model's heatmap coordinate h relates to the crop pixel j whose content it marks, per axis
# (crop width W, heatmap width W_h, stride s = W / W_h):
#   "pixel-center": this project, j = s * (h + 0.5) - 0.5
#   "msra": MMPose's MSRAHeatmap codec (plain and DARK), official HRNet / SimpleBaseline, j = s * h
#   "udp": MMPose's UDPHeatmap codec, j = h * (W - 1) / (W_h - 1)
HEATMAP_MAPPINGS = ("pixel-center", "msra", "udp")


def box_to_center_scale(
    boxes: Tensor, aspect_ratio: float, padding: float = PADDING
) -> tuple[Tensor, Tensor]:
    """Boxes (N, 4) x1, y1, x2, y2 in image pixels -> centre (N, 2) and region size (N, 2) w, h.

    The box is grown to `aspect_ratio` (w / h of the network input) around its centre, then
    padded by `padding`, so the person keeps its proportions and some context.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4) x1, y1, x2, y2, got {tuple(boxes.shape)}")
    x1, y1, x2, y2 = boxes.unbind(-1)
    center = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2), dim=-1)
    # A degenerate box (zero or negative size) still gets a one-pixel region, never a zero scale.
    w = (x2 - x1).clamp(min=1.0)
    h = (y2 - y1).clamp(min=1.0)
    w = torch.maximum(w, h * aspect_ratio)
    h = torch.maximum(h, w / aspect_ratio)
    return center, torch.stack((w, h), dim=-1) * padding


def boxes_from_keypoints(
    keypoints: torch.Tensor,
    score_thr: float = 0.3,
    padding: float = 1.25,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boxes around each person's confident keypoints, enlarged about their centre.

    The tight box spans the keypoints whose score exceeds `score_thr`; its width and height are
    then multiplied by `padding` (1.25 as in rtmlib's `pose_to_bbox`). A person with no keypoint
    above the threshold gets the all-zero box; one with a single such keypoint gets a zero-size
    box at it. Filter with `(x2 > x1) & (y2 > y1)` before cropping.

    Args:
        keypoints: (N, K, 3) x, y in image pixels and the keypoint score.
        score_thr: keypoints with score <= this are ignored.
        padding: scale factor on the box's width and height, > 0.
        image_size: (H, W) to clip the boxes to [0, W] x [0, H] like the detector's, or None.

    Returns:
        (N, 4) x1, y1, x2, y2 in image pixels, same dtype and device as `keypoints`.
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must have shape (N, K, 3), got {tuple(keypoints.shape)}")
    if not padding > 0:
        raise ValueError(f"padding must be > 0, got {padding}")
    xy = keypoints[..., :2]
    visible = (keypoints[..., 2] > score_thr).unsqueeze(-1)  # (N, K, 1)
    anyone = visible.any(dim=1)  # (N, 1)
    lo = torch.where(visible, xy, torch.inf).amin(dim=1)  # (N, 2)
    hi = torch.where(visible, xy, -torch.inf).amax(dim=1)
    lo, hi = torch.where(anyone, lo, 0.0), torch.where(anyone, hi, 0.0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * padding
    boxes = torch.cat([centre - half, centre + half], dim=-1)
    if image_size is not None:
        h, w = image_size
        limit = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
    return boxes


def grid_to_image_matrix(
    center: Tensor, scale: Tensor, size: tuple[int, int], rotation: Tensor | None = None
) -> Tensor:
    """Affine maps (N, 2, 3) from a grid of `size` (H, W) pixels over each region to image pixels.

    `rotation` (N,) in degrees turns the region counter-clockwise about its centre (training
    augmentation); the grid stays axis-aligned. Works for the crop grid and the heatmap grid.
    """
    h, w = size
    sx = scale[:, 0] / w
    sy = scale[:, 1] / h
    if rotation is None:
        cos = torch.ones_like(sx)
        sin = torch.zeros_like(sx)
    else:
        rad = rotation.to(sx.dtype) * (math.pi / 180)
        cos, sin = torch.cos(rad), torch.sin(rad)
    # Image y points down, so a counter-clockwise turn on screen is R(-theta) in these axes.
    a = torch.stack((cos * sx, sin * sy, -sin * sx, cos * sy), dim=-1).view(-1, 2, 2)
    # t = centre - A @ grid centre, written per axis so no tensor is made from Python numbers.
    gx, gy = (w - 1) / 2, (h - 1) / 2
    a00, a01, a10, a11 = a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1]
    t = torch.stack((center[:, 0] - a00 * gx - a01 * gy, center[:, 1] - a10 * gx - a11 * gy), -1)
    return torch.cat((a, t.unsqueeze(-1)), dim=-1)


def invert_affine(matrix: Tensor) -> Tensor:
    """Inverse of affine maps (N, 2, 3)."""
    a_inv = torch.linalg.inv(matrix[:, :, :2])
    t = -(a_inv @ matrix[:, :, 2:])
    return torch.cat((a_inv, t), dim=-1)


def apply_affine(matrix: Tensor, points: Tensor) -> Tensor:
    """Apply affine maps (N, 2, 3) to points (N, K, 2) -> (N, K, 2)."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


def grid_to_image(points: Tensor, center: Tensor, scale: Tensor, size: tuple[int, int]) -> Tensor:
    """Points (N, K, 2) in a crop or heatmap grid of `size` (H, W) -> image pixels (N, K, 2)."""
    h, w = size
    axes = [
        center[:, None, i] + (points[..., i] + 0.5 - n / 2) * (scale[:, None, i] / n)
        for i, n in enumerate((w, h))
    ]
    return torch.stack(axes, dim=-1)


def heatmap_to_crop(points: Tensor, stride: float) -> Tensor:
    """Heatmap pixels -> crop pixels for a network of output `stride`; any leading shape."""
    return (points + 0.5) * stride - 0.5


def crop_to_heatmap(points: Tensor, stride: float) -> Tensor:
    """Crop pixels -> heatmap pixels for a network of output `stride`; any leading shape."""
    return (points + 0.5) / stride - 0.5


def check_heatmap_mapping(mapping: str) -> str:
    """`mapping` itself, after checking it is one of `HEATMAP_MAPPINGS`."""
    if mapping not in HEATMAP_MAPPINGS:
        raise ValueError(
            f"unknown heatmap mapping {mapping!r}; choose from {', '.join(HEATMAP_MAPPINGS)}"
        )
    return mapping


def to_pixel_center_heatmap(
    points: Tensor, mapping: str, input_size: tuple[int, int], heatmap_size: tuple[int, int]
) -> Tensor:
    """Heatmap coordinates decoded from a model trained with `mapping` -> this project's heatmap
    pixels, so that `grid_to_image(..., heatmap_size)` maps them to the right image point.

    points (..., 2) x, y in heatmap pixels as the model's heatmaps (`heatmap_size` (H, W)) give
    them, for crops of `input_size` (H, W); returns the same shape. Identity for "pixel-center".
    The crops need no change: the network answers in pixel indices of the crop it sees, so only
    the heatmap -> crop map differs. An msra model decoded as pixel-center lands
    (1 - 1/s) / 2 heatmap pixels (1.5 crop pixels at s = 4) right of and below the truth.
    """
    check_heatmap_mapping(mapping)
    if mapping == "pixel-center":
        return points
    (h_in, w_in), (h_hm, w_hm) = input_size, heatmap_size
    if mapping == "udp" and min(h_hm, w_hm) < 2:
        raise ValueError(f"the udp mapping needs heatmaps of at least 2x2, got {heatmap_size}")
    stride = (w_in / w_hm, h_in / h_hm)
    if mapping == "msra":
        crop_per_heatmap = stride
    else:
        crop_per_heatmap = ((w_in - 1) / (w_hm - 1), (h_in - 1) / (h_hm - 1))
    # j = c * h in the model's map; this project's heatmap pixel of crop pixel j is (j + 0.5) / s
    # - 0.5 (`crop_to_heatmap`): one affine map per axis with Python scalars, so no tensor is
    # made (nor copied to the device) per call.
    axes = [
        points[..., i] * (c / s) + (0.5 / s - 0.5)
        for i, (c, s) in enumerate(zip(crop_per_heatmap, stride, strict=True))
    ]
    return torch.stack(axes, dim=-1)


def warp_crops(
    images: Tensor,
    batch_index: Tensor | None,
    center: Tensor,
    scale: Tensor,
    size: tuple[int, int],
    rotation: Tensor | None = None,
    flip: bool = False,
) -> Tensor:
    """Cut N regions out of a batch of images in one bilinear warp on the images' device.

    images (B, C, H, W) float; batch_index (N,) which image each region comes from (None when B is
    1: the one image is shared by every region without a copy); centre and
    scale (N, 2) in image pixels; size (H_out, W_out). Returns (N, C, H_out, W_out); pixels outside
    the image are 0. With `flip`, each crop is mirrored left-right (flip test), which is the same
    as sampling the mirrored region: crop pixel x <- W_out - 1 - x.
    """
    if center.shape[0] == 0:
        return images.new_zeros((0, images.shape[1], *size))
    h_out, w_out = size
    h_img, w_img = images.shape[-2:]
    matrix = grid_to_image_matrix(center, scale, size, rotation).to(images.dtype)
    ys = torch.arange(h_out, device=images.device, dtype=images.dtype)
    xs = torch.arange(w_out, device=images.device, dtype=images.dtype)
    if flip:
        xs = xs.flip(0)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((gx, gy), dim=-1).reshape(1, -1, 2).expand(center.shape[0], -1, -1)
    pts = apply_affine(matrix, grid)
    # grid_sample with align_corners=False puts -1 and 1 on the outer pixel edges, which is
    # the same pixel-centre convention: x_norm = (2x + 1) / W - 1.
    norm = torch.stack([(2 * pts[..., i] + 1) / n - 1 for i, n in enumerate((w_img, h_img))], -1)
    # One frame (the streaming case) is shared by all crops without copying it per person.
    src = (
        images.expand(center.shape[0], -1, -1, -1)
        if batch_index is None or images.shape[0] == 1
        else images[batch_index]
    )
    out = F.grid_sample(
        src, norm.view(-1, h_out, w_out, 2), mode="bilinear", padding_mode="zeros",
        align_corners=False,
    )  # fmt: skip
    return out
