import pytest
import torch

from ccm.codec import HeatmapCodec, encode_heatmaps, encode_targets


def crop_keypoints(n: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 17, generator=g, dtype=torch.float64) * 160 + 16
    y = torch.rand(n, 17, generator=g, dtype=torch.float64) * 220 + 18
    return torch.stack((x, y, torch.full_like(x, 2)), dim=-1)


def round_trip_error(codec: HeatmapCodec, keypoints: torch.Tensor) -> float:
    heatmaps, weights = codec.encode(keypoints)
    assert torch.equal(weights, torch.ones_like(weights))
    xy, _ = codec.decode(heatmaps)
    # In heatmap pixels, the unit the tolerance is stated in.
    return ((xy.double() - keypoints[..., :2]) / codec.stride).norm(dim=-1).mean().item()


def test_unbiased_round_trip_is_subpixel_and_biased_is_not():
    keypoints = crop_keypoints()
    assert round_trip_error(HeatmapCodec(method="dark"), keypoints) < 0.01
    assert round_trip_error(HeatmapCodec(method="parabola"), keypoints) < 0.02
    biased = round_trip_error(HeatmapCodec(method="dark", unbiased=False), keypoints)
    assert 0.3 < biased < 0.45  # the quantisation error of rounding to a pixel centre


def test_peak_value_and_position():
    xy = torch.tensor([[[10.0, 20.0], [3.4, 7.6]]])
    hm = encode_heatmaps(xy, (64, 48), sigma=2.0)
    assert hm.shape == (1, 2, 64, 48)
    assert hm[0, 0, 20, 10] == 1.0
    assert hm[0, 0, 20, 12] == pytest.approx(torch.exp(torch.tensor(-0.5)).item(), abs=1e-7)
    # Unbiased: the continuous peak is off-grid; the nearest pixel is exp(-(0.4^2+0.4^2)/8).
    assert hm[0, 1, 8, 3] == pytest.approx(torch.exp(torch.tensor(-0.32 / 8)).item(), abs=1e-6)
    biased = encode_heatmaps(xy, (64, 48), sigma=2.0, unbiased=False)
    assert biased[0, 1, 8, 3] == 1.0


def test_target_weights_drop_unlabelled_and_far_off_map_joints():
    keypoints = torch.tensor(
        [
            [
                [10.0, 10.0, 2],
                [10.0, 10.0, 1],
                [10.0, 10.0, 0],
                [-5.0, 10.0, 2],
                [-7.0, 10.0, 2],
                [50.0, 70.0, 2],
            ]
        ]
    )
    heatmaps, weights = encode_targets(keypoints, (64, 48), sigma=2.0)
    assert weights.tolist() == [[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]]
    assert heatmaps[0, 2].abs().sum() == 0 and heatmaps[0, 4].abs().sum() == 0
    assert heatmaps[0, 3].max() > 0  # 5 px off the map still reaches it with sigma 2


def test_codec_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="stride"):
        HeatmapCodec(input_size=(256, 192), heatmap_size=(64, 64))
    with pytest.raises(ValueError, match="unknown decode method"):
        HeatmapCodec(method="soft")
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        encode_heatmaps(torch.zeros(17, 2), (64, 48))
