"""Heatmaps -> sub-pixel keypoint coordinates, and the flip test.

Every function is batched over (N, K, H, W), runs on the heatmaps' device and branches only through
`torch.where` masks, so it can sit inside a `torch.compile` or TensorRT graph. Coordinates are in
heatmap pixels: pixel (row i, column j) has its centre at (x=j, y=i).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DECODE_METHODS = ("argmax", "shift", "parabola", "paraboloid", "dark")


def gaussian_sigma(kernel: int) -> float:
    """OpenCV's sigma for a k x k Gaussian kernel given sigma=0, the filter DARK uses."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def gaussian_blur(heatmaps: Tensor, kernel: int) -> Tensor:
    """Gaussian filtering (GF, CCM Sec. 5.3) with DARK's distribution modulation.

    heatmaps (N, K, H, W) -> (N, K, H, W). Zero padding outside the map, then each map is rescaled
    so its maximum equals the maximum before filtering: the score stays the network's confidence.
    Zero padding as in DarkPose: it pulls a peak on the very border about one pixel inwards
    (0.2 px two pixels in, nothing from five on); mirrored or replicated borders push such peaks
    outwards by up to 1.5 px instead, which is worse.
    """
    if kernel < 3 or kernel % 2 == 0:
        raise ValueError(f"blur kernel must be an odd size >= 3, got {kernel}")
    n, k, h, w = heatmaps.shape
    r = kernel // 2
    x = torch.arange(kernel, device=heatmaps.device, dtype=heatmaps.dtype) - r
    g = torch.exp(-(x**2) / (2 * gaussian_sigma(kernel) ** 2))
    g = g / g.sum()
    out = heatmaps.reshape(n * k, 1, h, w)
    out = F.conv2d(out, g.view(1, 1, 1, -1), padding=(0, r))
    out = F.conv2d(out, g.view(1, 1, -1, 1), padding=(r, 0)).view(n, k, h, w)
    old_max = heatmaps.amax(dim=(-2, -1), keepdim=True)
    new_max = out.amax(dim=(-2, -1), keepdim=True)
    # Maps without a positive peak carry no confidence to keep; they are only smoothed.
    positive = (new_max > 0) & (old_max > 0)
    return out * torch.where(positive, old_max / torch.where(positive, new_max, 1.0), 1.0)


def decode_heatmaps(
    heatmaps: Tensor, method: str = "parabola", blur_kernel: int = 0
) -> tuple[Tensor, Tensor]:
    """Locate each map's maximum with sub-pixel accuracy.

    heatmaps (N, K, H, W) float; method: "argmax", "shift" (0.25 px towards the higher
    neighbour), "parabola" (SOA, Eq. (10)), "paraboloid" (SOA, Eq. (11)-(19)) or "dark" (Taylor
    expansion of the log-heatmap); blur_kernel: odd size of the Gaussian filter applied first
    (GF), 0 = off. Returns xy (N, K, 2) in heatmap pixels and scores (N, K), both float32.

    Scores are the map maxima, 0 where the maximum is not positive. A map with no peak (all
    values equal, e.g. all zero) scores 0 and is placed at the map centre. Near the border,
    offsets that would need a pixel outside the map are dropped, so every output is finite.
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"unknown decode method {method!r}; choose from {DECODE_METHODS}")
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, H, W), got {tuple(heatmaps.shape)}")
    hm = heatmaps.float()
    n, k, h, w = hm.shape
    # Judge flatness before filtering: zero padding would give a flat map a peak of its own.
    peaked = hm.flatten(2).amax(dim=-1) > hm.flatten(2).amin(dim=-1)
    if blur_kernel:
        hm = gaussian_blur(hm, blur_kernel)
    maxval, idx = hm.flatten(2).max(dim=-1)
    x0 = idx % w
    y0 = idx // w

    if method == "dark":
        hm = torch.log(hm.clamp(min=1e-10))
    padded = F.pad(hm, (2, 2, 2, 2), mode="replicate").flatten(2)

    def at(dx: int, dy: int) -> Tensor:
        """Value at (x0 + dx, y0 + dy) for every map; border pixels repeat outside the map."""
        flat_idx = (y0 + 2 + dy) * (w + 4) + (x0 + 2 + dx)
        return padded.gather(-1, flat_idx.unsqueeze(-1)).squeeze(-1)

    in_x = (x0 > 0) & (x0 < w - 1)
    in_y = (y0 > 0) & (y0 < h - 1)
    if method == "argmax":
        offset = torch.zeros(n, k, 2, device=hm.device)
    elif method == "shift":
        offset = torch.stack(
            (
                torch.where(in_x, 0.25 * torch.sign(at(1, 0) - at(-1, 0)), 0.0),
                torch.where(in_y, 0.25 * torch.sign(at(0, 1) - at(0, -1)), 0.0),
            ),
            dim=-1,
        )
    elif method == "parabola":
        offset = _parabola_offset(at, in_x, in_y)
    elif method == "paraboloid":
        offset = _paraboloid_offset(at, in_x, in_y)
    else:
        offset = _taylor_offset(at, x0, y0, w, h)

    xy = torch.stack((x0, y0), dim=-1).float() + offset
    # A flat map sits at the map centre; per-axis Python scalars, so no tensor is made per call.
    xy = torch.stack(
        (
            torch.where(peaked, xy[..., 0], (w - 1) / 2),
            torch.where(peaked, xy[..., 1], (h - 1) / 2),
        ),
        dim=-1,
    )
    scores = torch.where(peaked & (maxval > 0), maxval, 0.0)
    return xy, scores


def _parabola_offset(at, in_x: Tensor, in_y: Tensor) -> Tensor:
    """Eq. (10) along each axis: x* = x0 + (z0 - z2) / (2 (z0 + z2 - 2 z1))."""
    z1 = at(0, 0)

    def axis(z0: Tensor, z2: Tensor, inside: Tensor) -> Tensor:
        curvature = z0 + z2 - 2 * z1
        ok = inside & (curvature < 0)
        shift = (z0 - z2) / (2 * torch.where(ok, curvature, -1.0))
        return torch.where(ok, shift.clamp(-0.5, 0.5), 0.0)

    return torch.stack((axis(at(-1, 0), at(1, 0), in_x), axis(at(0, -1), at(0, 1), in_y)), dim=-1)


def _paraboloid_offset(at, in_x: Tensor, in_y: Tensor) -> Tensor:
    """Eq. (14)-(19): a paraboloid through the 3x3 neighbourhood; z_rc is row r, column c.

    Where the fit has no maximum (not negative definite) or a neighbour is off the map, the
    per-axis parabola of Eq. (10) stands in.
    """
    z = [[at(c - 1, r - 1) for c in range(3)] for r in range(3)]
    a = (2 * (z[1][2] + z[1][0] - 2 * z[1][1]) + (z[0][2] + z[0][0] - 2 * z[0][1])
         + (z[2][2] + z[2][0] - 2 * z[2][1])) / 8  # fmt: skip
    b = (2 * (z[0][1] + z[2][1] - 2 * z[1][1]) + (z[0][0] + z[2][0] - 2 * z[1][0])
         + (z[0][2] + z[2][2] - 2 * z[1][2])) / 8  # fmt: skip
    c = (z[0][0] + z[2][2] - z[0][2] - z[2][0]) / 4
    d = ((z[0][2] - z[0][0]) + (z[2][2] - z[2][0]) + 2 * (z[1][2] - z[1][0])) / 8
    e = ((z[2][0] - z[0][0]) + (z[2][2] - z[0][2]) + 2 * (z[2][1] - z[0][1])) / 8
    det = c * c - 4 * a * b
    ok = in_x & in_y & (a < 0) & (det < 0)
    safe = torch.where(ok, det, -1.0)
    shift = torch.stack(((2 * b * d - c * e) / safe, (2 * a * e - c * d) / safe), dim=-1)
    return torch.where(ok.unsqueeze(-1), shift.clamp(-1.0, 1.0), _parabola_offset(at, in_x, in_y))


def _taylor_offset(at, x0: Tensor, y0: Tensor, w: int, h: int) -> Tensor:
    """DARK: one Newton step on the log-heatmap, -H^-1 g, with DarkPose's finite differences.

    Applied where DarkPose applies it (2 <= x0 <= W-3, same for y) and only where the Hessian is
    negative definite, so the step always moves towards a maximum.
    """
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    dyy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy * dxy
    inside = (x0 > 1) & (x0 < w - 2) & (y0 > 1) & (y0 < h - 2)
    ok = inside & (dxx < 0) & (det > 0)
    safe = torch.where(ok, det, 1.0)
    shift = torch.stack(((dxy * dy - dyy * dx) / safe, (dxy * dx - dxx * dy) / safe), dim=-1)
    return torch.where(ok.unsqueeze(-1), shift.clamp(-1.0, 1.0), 0.0)


def flip_back(flipped: Tensor, flip_perm: Sequence[int], alpha: float = 0.0) -> Tensor:
    """Heatmaps predicted on mirrored crops (N, K, H, W) -> heatmaps of the unmirrored crops.

    Mirrors the maps, swaps left/right channels by `flip_perm` and applies the sub-pixel shift of
    flipped heatmaps (SSP), Eq. (22): h*(i, j) = (1 - alpha) h(i, j) + alpha h(i, j - 1).
    alpha = 1 is the usual one-pixel shift. With this project's grids (see ccm.geometry) mirroring
    is exact and alpha = 0 is right; a model trained with SimpleBaseline's x_hm = x_crop / stride
    mapping is off by (stride - 1) / stride heatmap pixels, so alpha = 0.75 for stride 4, which is
    why the paper measures its best AP at alpha = 0.8 (Tables 5-6).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SSP alpha must be in [0, 1], got {alpha}")
    mirrored = flipped.flip(-1)
    # Channel slices, not an index tensor: nothing is copied to the device per call.
    out = torch.cat([mirrored[:, k : k + 1] for k in flip_perm], dim=1)
    if alpha:
        shifted = torch.cat((out[..., :1], out[..., :-1]), dim=-1)
        out = (1 - alpha) * out + alpha * shifted
    return out


def fuse_flip(
    heatmaps: Tensor, flipped: Tensor, flip_perm: Sequence[int], alpha: float = 0.0
) -> Tensor:
    """Flip test: average the maps of the crops (N, K, H, W) with those of their mirror images."""
    return 0.5 * (heatmaps + flip_back(flipped, flip_perm, alpha))
