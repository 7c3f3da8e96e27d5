import cv2
import numpy as np
import pytest
import torch

from ccm.codec import encode_heatmaps
from ccm.refine import (
    DECODE_METHODS,
    decode_heatmaps,
    flip_back,
    fuse_flip,
    gaussian_blur,
    gaussian_sigma,
)
from ccm.skeleton import COCO_FLIP_PAIRS, flip_permutation

H, W = 64, 48


def random_centres(n: int, k: int, margin: float = 8.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, k, generator=g, dtype=torch.float64) * (W - 2 * margin) + margin
    y = torch.rand(n, k, generator=g, dtype=torch.float64) * (H - 2 * margin) + margin
    return torch.stack((x, y), dim=-1)


def mean_error(method: str, heatmaps: torch.Tensor, xy: torch.Tensor, blur: int = 0) -> float:
    pred, _ = decode_heatmaps(heatmaps.float(), method, blur)
    return (pred.double() - xy).norm(dim=-1).mean().item()


@pytest.fixture(scope="module")
def clean():
    xy = random_centres(64, 17)
    return xy, encode_heatmaps(xy, (H, W), sigma=2.0)


def test_clean_gaussians_decode_to_subpixel_accuracy(clean):
    xy, hm = clean
    assert mean_error("dark", hm, xy) < 0.005
    assert mean_error("parabola", hm, xy) < 0.02
    assert mean_error("paraboloid", hm, xy) < 0.02
    # The fixed quarter-pixel shift leaves about 0.2 px; plain argmax about 0.38 px.
    assert 0.15 < mean_error("shift", hm, xy) < 0.25
    assert 0.3 < mean_error("argmax", hm, xy) < 0.45


def test_gaussian_filter_improves_every_method_under_noise(clean):
    xy, hm = clean
    noisy = hm + 0.05 * torch.randn(
        hm.shape, generator=torch.Generator().manual_seed(1), dtype=hm.dtype
    )
    for method in DECODE_METHODS:
        raw = mean_error(method, noisy, xy)
        filtered = mean_error(method, noisy, xy, blur=11)
        assert filtered < raw * 0.9, (method, raw, filtered)
    assert mean_error("parabola", noisy, xy, blur=11) < 0.07


def test_scores_are_map_maxima(clean):
    _, hm = clean
    _, scores = decode_heatmaps(hm.float(), "dark", blur_kernel=11)
    torch.testing.assert_close(scores, hm.float().amax(dim=(-2, -1)), rtol=0, atol=1e-6)


# DarkPose's lib/core/inference.py (taylor, gaussian_blur, get_final_preds), per joint in NumPy.
def darkpose_taylor(hm, coord):
    height, width = hm.shape
    px, py = int(coord[0]), int(coord[1])
    if 1 < px < width - 2 and 1 < py < height - 2:
        dx = 0.5 * (hm[py][px + 1] - hm[py][px - 1])
        dy = 0.5 * (hm[py + 1][px] - hm[py - 1][px])
        dxx = 0.25 * (hm[py][px + 2] - 2 * hm[py][px] + hm[py][px - 2])
        dxy = 0.25 * (
            hm[py + 1][px + 1] - hm[py - 1][px + 1] - hm[py + 1][px - 1] + hm[py - 1][px - 1]
        )
        dyy = 0.25 * (hm[py + 2][px] - 2 * hm[py][px] + hm[py - 2][px])
        derivative = np.array([dx, dy])
        hessian = np.array([[dxx, dxy], [dxy, dyy]])
        if dxx * dyy - dxy**2 != 0:
            coord = coord - np.linalg.inv(hessian) @ derivative
    return coord


def darkpose_decode(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    n, k, h, w = heatmaps.shape
    out = np.zeros((n, k, 2))
    border = (kernel - 1) // 2
    for i in range(n):
        for j in range(k):
            hm = heatmaps[i, j].astype(np.float64)
            origin_max = hm.max()
            padded = np.zeros((h + 2 * border, w + 2 * border))
            padded[border:-border, border:-border] = hm
            sigma = gaussian_sigma(kernel)
            padded = cv2.GaussianBlur(padded, (kernel, kernel), sigma, sigmaY=sigma)
            hm = (
                padded[border:-border, border:-border]
                * origin_max
                / padded[border:-border, border:-border].max()
            )
            py, px = np.unravel_index(np.argmax(hm), hm.shape)
            hm = np.log(np.maximum(hm, 1e-10))
            out[i, j] = darkpose_taylor(hm, np.array([px, py], dtype=np.float64))
    return out


def test_dark_matches_darkpose_numpy_port():
    xy = random_centres(4, 17, seed=3)
    noise = torch.randn(
        4, 17, H, W, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    hm = encode_heatmaps(xy, (H, W), sigma=2.0) + 0.03 * noise
    ours, _ = decode_heatmaps(hm, "dark", blur_kernel=11)
    ref = darkpose_decode(hm.numpy(), 11)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4, rtol=0)


def test_batch_invariance(clean):
    xy, hm = clean
    noisy = hm.float() + 0.02 * torch.randn(hm.shape, generator=torch.Generator().manual_seed(2))
    for method in DECODE_METHODS:
        batch, batch_scores = decode_heatmaps(noisy, method, 5)
        for i in (0, 17, 63):
            one, one_scores = decode_heatmaps(noisy[i : i + 1], method, 5)
            torch.testing.assert_close(batch[i : i + 1], one, rtol=0, atol=1e-5)
            torch.testing.assert_close(batch_scores[i : i + 1], one_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", DECODE_METHODS)
def test_border_peaks_are_finite_and_stay_on_the_map(method):
    corners = torch.tensor(
        [[[0.0, 0.0], [W - 1, 0.0], [0.0, H - 1], [W - 1, H - 1], [1.0, 30.2], [W - 1.6, 0.7]]]
    )
    hm = encode_heatmaps(corners, (H, W), sigma=2.0)
    # Zero-padded filtering pulls a peak on the border inwards by about a pixel per axis.
    for blur, tolerance in ((0, 0.5), (11, 1.3)):
        xy, scores = decode_heatmaps(hm, method, blur)
        assert torch.isfinite(xy).all() and torch.isfinite(scores).all()
        assert (xy[..., 0] >= -0.5).all() and (xy[..., 0] <= W - 0.5).all()
        assert (xy[..., 1] >= -0.5).all() and (xy[..., 1] <= H - 0.5).all()
        assert (xy - corners).abs().max() < tolerance


@pytest.mark.parametrize("method", DECODE_METHODS)
def test_flat_maps_score_zero_with_finite_coordinates(method):
    hm = torch.stack(
        (torch.zeros(H, W), torch.full((H, W), 0.3), torch.full((H, W), -0.2))
    ).unsqueeze(0)
    for blur in (0, 5):
        xy, scores = decode_heatmaps(hm, method, blur)
        assert torch.equal(scores, torch.zeros(1, 3))
        torch.testing.assert_close(xy, torch.tensor([[[(W - 1) / 2, (H - 1) / 2]] * 3]))


def test_bad_arguments_are_refused():
    hm = torch.zeros(1, 17, H, W)
    with pytest.raises(ValueError, match="unknown decode method"):
        decode_heatmaps(hm, "softargmax")
    with pytest.raises(ValueError, match="odd size"):
        decode_heatmaps(hm, "dark", blur_kernel=4)
    with pytest.raises(ValueError, match=r"\(N, K, H, W\)"):
        decode_heatmaps(hm[0], "dark")
    with pytest.raises(ValueError, match="alpha"):
        flip_back(hm, range(17), alpha=1.5)


def test_gaussian_blur_keeps_each_maximum():
    hm = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(5))
    out = gaussian_blur(hm, 7)
    torch.testing.assert_close(out.amax(dim=(-2, -1)), hm.amax(dim=(-2, -1)))
    assert out.std() < hm.std() * 0.5


def test_flip_back_eq22_on_random_maps():
    perm = flip_permutation(17)
    hf = torch.rand(2, 17, H, W, generator=torch.Generator().manual_seed(6))
    alpha = 0.4
    mirrored = hf.flip(-1)[:, perm]
    expected = mirrored.clone()
    expected[..., 1:] = (1 - alpha) * mirrored[..., 1:] + alpha * mirrored[..., :-1]
    torch.testing.assert_close(flip_back(hf, perm, alpha), expected)
    torch.testing.assert_close(flip_back(hf, perm, 0.0), mirrored)


def test_flip_test_is_exact_with_unbiased_grids():
    # Mirroring a crop maps crop x to W_in - 1 - x; in heatmap pixels that is W - 1 - x exactly.
    perm = flip_permutation(17, COCO_FLIP_PAIRS)
    xy = random_centres(3, 17, seed=7)
    mirrored = xy[:, perm].clone()
    mirrored[..., 0] = W - 1 - mirrored[..., 0]
    heatmaps = encode_heatmaps(xy, (H, W))
    fused = fuse_flip(heatmaps, encode_heatmaps(mirrored, (H, W)), perm, alpha=0.0)
    torch.testing.assert_close(fused, heatmaps)
    pred, _ = decode_heatmaps(fused, "dark")
    assert (pred.double() - xy).norm(dim=-1).max() < 1e-3


def test_ssp_alpha_075_corrects_simplebaseline_mapping():
    # SimpleBaseline maps x_hm = x_crop / 4, so mirroring in the crop (x -> 4W - 1 - x) lands at
    # W - 0.25 - x_hm, while mirroring the map gives W - 1 - x_hm: a 0.75 px misalignment.
    perm = list(range(17))
    x_crop = random_centres(8, 17, seed=8) * 4
    mirrored_crop = x_crop.clone()
    mirrored_crop[..., 0] = 4 * W - 1 - x_crop[..., 0]
    heatmaps = encode_heatmaps(x_crop / 4, (H, W))
    flipped = encode_heatmaps(mirrored_crop / 4, (H, W))
    errors = {}
    for alpha in (0.0, 0.75, 1.0):
        pred, _ = decode_heatmaps(fuse_flip(heatmaps, flipped, perm, alpha), "dark")
        errors[alpha] = (pred[..., 0].double() - x_crop[..., 0] / 4).abs().mean().item()
    assert errors[0.75] < 0.02
    assert errors[0.0] > 0.3 and errors[1.0] > 0.1


def test_decoding_compiles_without_graph_breaks():
    perm = flip_permutation(17)

    def refine(hm, hf):
        return decode_heatmaps(fuse_flip(hm, hf, perm, 0.5), "dark", blur_kernel=5)

    xy = random_centres(3, 17, seed=9).float()
    hm = encode_heatmaps(xy, (H, W))
    hf = hm.flip(-1)
    compiled = torch.compile(refine, fullgraph=True, dynamic=False)
    for got, want in zip(compiled(hm, hf), refine(hm, hf), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", DECODE_METHODS)
def test_cuda_matches_cpu(method):
    xy = random_centres(16, 17, seed=10)
    hm = (
        encode_heatmaps(xy, (H, W)) + 0.02 * torch.randn(16, 17, H, W, dtype=torch.float64)
    ).float()
    cpu = decode_heatmaps(hm, method, 11)
    gpu = decode_heatmaps(hm.cuda(), method, 11)
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-4)
