from pathlib import Path

import pytest
import torch
from toys import DotFinder, blob_frame

from ccm.checkpoint import PoseConfig
from ccm.codec import encode_heatmaps
from ccm.geometry import crop_to_heatmap, grid_to_image
from ccm.skeleton import flip_permutation
from realtime.pose.config import PoseStageConfig
from realtime.pose.estimator import PoseEstimator

SIZE = (128, 96)
POSE = PoseConfig("ccm_mobilenetv2", input_size=SIZE)
DEMO_POSE = Path(__file__).parents[3] / "weights" / "demo-ccm-mobilenetv2-128x96.safetensors"


def engine(backend="eager", **kw) -> PoseEstimator:
    return PoseEstimator(
        DotFinder(), POSE, PoseStageConfig(backend=backend, decoder="dark", blur_kernel=0, **kw)
    )


def test_keypoints_land_on_the_image_point_with_flip_test():
    points = [(120.3, 150.6), (300.8, 200.2), (401.5, 95.0)]
    boxes = torch.tensor([[x - 40, y - 70, x + 50, y + 60] for x, y in points])
    for flip in (False, True):
        out = engine(flip_test=flip)(blob_frame(points), boxes)
        assert out.shape == (3, 17, 3)
        err = (out[:, 0, :2] - torch.tensor(points)).norm(dim=-1)
        assert err.max() < 0.05, (flip, err)
        assert (out[..., 2] > 0.3).all()


# Two regions (image pixels) with the crops' aspect ratio 96 / 128: image px per crop px 1.5625
# and 0.9375.
CENTER = torch.tensor([[200.5, 150.25], [320.0, 240.0]])
SCALE = torch.tensor([[150.0, 200.0], [90.0, 120.0]])


def codec_heatmaps(crop: torch.Tensor, mapping: str) -> torch.Tensor:
    """Unbiased Gaussians (sigma 2) at crop points (N, K, 2), placed on a (32, 24) heatmap the way
    each codec encodes: msra at crop / 4 (MMPose MSRAHeatmap), udp at crop (W_h - 1) / (W - 1)
    (MMPose UDPHeatmap), pixel-center at (crop + 0.5) / 4 - 0.5 (this project)."""
    (h_in, w_in), (h_hm, w_hm) = SIZE, POSE.heatmap_size
    if mapping == "msra":
        xy = crop / 4
    elif mapping == "udp":
        xy = crop * torch.tensor([(w_hm - 1) / (w_in - 1), (h_hm - 1) / (h_in - 1)])
    else:
        xy = crop_to_heatmap(crop, 4)
    return encode_heatmaps(xy.double(), (h_hm, w_hm)).float()


def network_heatmaps(crop: torch.Tensor, mapping: str, flip_test: bool) -> torch.Tensor:
    """What a perfect network trained with `mapping` returns for the crops and, with the flip
    test, for the mirrored crops: there joint k shows the mirror image of joint perm[k]."""
    plain = codec_heatmaps(crop, mapping)
    if not flip_test:
        return plain
    mirrored = crop[:, flip_permutation(crop.shape[1])].clone()
    mirrored[..., 0] = SIZE[1] - 1 - mirrored[..., 0]
    return torch.cat((plain, codec_heatmaps(mirrored, mapping)))


def crop_points(seed: int) -> torch.Tensor:
    """(2, 17, 2) crop pixels away from the border (DARK needs neighbours)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 17, 2, generator=g, dtype=torch.float64) * torch.tensor([72.0, 104.0]) + 12


def refine_heatmaps(pose: PoseConfig, heatmaps: torch.Tensor, flip_test: bool) -> torch.Tensor:
    """The pose stage's decoding (its codec) of the maps of two people, (2, 17, 2) image px."""
    codec = PoseEstimator(DotFinder(), pose, PoseStageConfig(decoder="dark", blur_kernel=0)).codec
    flipped = heatmaps[2:] if flip_test else None
    return codec.to_image(heatmaps[:2], CENTER, SCALE, flipped)[..., :2].double()


@pytest.mark.parametrize(
    ("mapping", "flip_alpha"), [("pixel-center", 0.0), ("msra", 0.75), ("udp", 0.0)]
)
def test_each_codec_decodes_to_the_true_image_point(mapping, flip_alpha):
    pose = PoseConfig("ccm_mobilenetv2", input_size=SIZE, flip_alpha=flip_alpha,
                      heatmap_mapping=mapping)  # fmt: skip
    crop = crop_points(seed=1)
    truth = grid_to_image(crop, CENTER.double(), SCALE.double(), SIZE)
    out = refine_heatmaps(pose, network_heatmaps(crop, mapping, False), flip_test=False)
    assert (out - truth).abs().max() < 1e-3  # measured 1.6e-5 to 2.2e-5 image px


def test_msra_heatmaps_read_as_pixel_centre_are_off_by_one_and_a_half_crop_pixels():
    crop = crop_points(seed=2)
    truth = grid_to_image(crop, CENTER.double(), SCALE.double(), SIZE)
    heatmaps = network_heatmaps(crop, "msra", False)
    out = refine_heatmaps(POSE, heatmaps, flip_test=False)  # POSE: pixel-center
    # 1.5 crop px x (region size / crop size) image px, right and down, for every keypoint.
    expected = (1.5 * SCALE[:, 0] / SIZE[1]).double()  # 2.34375 and 1.40625
    torch.testing.assert_close(out - truth, expected[:, None, None].expand_as(out),
                               rtol=0, atol=1e-4)  # fmt: skip


def test_flip_test_realigns_each_codec_with_its_ssp_alpha():
    crop = crop_points(seed=3)
    truth = grid_to_image(crop, CENTER.double(), SCALE.double(), SIZE)
    errors = {}
    for mapping, alpha in (("msra", 0.75), ("msra", 0.0), ("udp", 0.0), ("pixel-center", 0.0)):
        pose = PoseConfig("ccm_mobilenetv2", input_size=SIZE, flip_alpha=alpha,
                          heatmap_mapping=mapping)  # fmt: skip
        out = refine_heatmaps(pose, network_heatmaps(crop, mapping, True), flip_test=True)
        # In crop pixels, so the numbers do not depend on the region size.
        errors[mapping, alpha] = ((out - truth) * SIZE[1] / SCALE[:, None, :1]).abs().max().item()
    # UDP and this project's grids mirror exactly (measured 2e-5 crop px). msra's mirrored maps
    # sit 0.75 heatmap px left; SSP's alpha 0.75 (Eq. 22) blends them back, leaving 0.022 crop px
    # because a blend of two shifted Gaussians peaks slightly off their mean; alpha 0 leaves the
    # fused peak 1.5 crop px off.
    assert errors["udp", 0.0] < 1e-3 and errors["pixel-center", 0.0] < 1e-3
    assert errors["msra", 0.75] < 0.03
    assert errors["msra", 0.0] > 1.4


def test_the_refine_step_of_an_imported_model_compiles_without_graph_breaks():
    pose = PoseConfig("ccm_mobilenetv2", input_size=SIZE, flip_alpha=0.75, heatmap_mapping="msra")
    codec = pose.codec("dark", blur_kernel=5)
    heatmaps = network_heatmaps(crop_points(seed=4), "msra", True)
    compiled = torch.compile(codec.to_image, backend="eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(
        compiled(heatmaps[:2], CENTER, SCALE, heatmaps[2:]),
        codec.to_image(heatmaps[:2], CENTER, SCALE, heatmaps[2:]),
    )


def test_nan_heatmaps_give_nan_keypoints_not_an_empty_pose():
    pose_nan = PoseConfig("ccm_mobilenetv2", input_size=SIZE)
    heatmaps = network_heatmaps(crop_points(seed=5), "pixel-center", False)
    heatmaps[1, 3, 0, 0] = float("nan")
    out = pose_nan.codec("parabola").to_image(heatmaps, CENTER, SCALE)
    assert out[0].isfinite().all() and out[1].isnan().all()


def test_no_people_gives_an_empty_result():
    for backend in ("eager", "compile"):
        out = engine(backend, batch_buckets=(1, 2))(blob_frame([]), torch.zeros(0, 4))
        assert out.shape == (0, 17, 3)


def test_a_crowd_larger_than_the_largest_bucket_runs_in_chunks_with_no_compile_after_warm_up():
    from torch._dynamo.utils import counters

    points = [(40.0 + 45 * i, 100.0 + 20 * (i % 3)) for i in range(9)]
    boxes = torch.tensor([[x - 20, y - 30, x + 20, y + 30] for x, y in points])
    frame = blob_frame(points)
    eager = engine()(frame, boxes)
    compiled = engine("compile", batch_buckets=(2, 4))  # warms both buckets up when built
    assert compiled.bucket_for(3) == 4 and compiled.bucket_for(1) == 2
    graphs = dict(counters["stats"])
    # Nine people with buckets up to 4: chunks of 4, 4 and 1 (padded to 2).
    out = compiled(frame, boxes)
    assert out.shape == (9, 17, 3)
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-3)
    torch.testing.assert_close(compiled(frame, boxes[:3]), eager[:3], rtol=0, atol=1e-3)
    assert dict(counters["stats"]) == graphs  # nothing compiled after the warm-up
    err = (out[:, 0, :2] - torch.tensor(points)).norm(dim=-1)
    assert err.max() < 0.05


def test_people_of_several_frames_in_one_call_match_one_frame_at_a_time():
    a, b = [(120.3, 150.6), (300.8, 200.2)], [(401.5, 95.0)]
    box = lambda x, y: [x - 40, y - 70, x + 50, y + 60]  # noqa: E731
    frames = torch.cat((blob_frame(a), blob_frame(b)))
    boxes = torch.tensor([box(*p) for p in a + b])
    est = engine()
    both = est(frames, boxes, counts=[2, 1])
    torch.testing.assert_close(both[:2], est(frames[:1], boxes[:2]), rtol=0, atol=0)
    torch.testing.assert_close(both[2:], est(frames[1:], boxes[2:]), rtol=0, atol=0)
    assert (both[:, 0, :2] - torch.tensor(a + b)).norm(dim=-1).max() < 0.05
    with pytest.raises(ValueError, match="do not match counts"):
        est(frames, boxes, counts=[1, 1])


def test_real_network_runs_on_a_frame_and_leaves_the_callers_model_alone():
    torch.manual_seed(0)
    model = POSE.build_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = PoseEstimator(model, POSE, PoseStageConfig())(
        blob_frame([(200.0, 180.0)]), torch.tensor([[150.0, 100.0, 250.0, 260.0]])
    )
    assert out.shape == (1, 17, 3) and torch.isfinite(out).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_engine_settings_are_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        PoseStageConfig(backend="onnx")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        PoseStageConfig(half=True)
    with pytest.raises(ValueError, match="tensorrt backend needs a CUDA device"):
        PoseStageConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="increasing"):
        PoseStageConfig(batch_buckets=(4, 2))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize(
    ("backend", "half"), [("eager", True), ("compile", False), ("compile", True)]
)
def test_gpu_paths_match_eager_fp32_within_half_a_pixel(backend, half):
    points = [(100.0 + 50 * i, 100.0 + 30 * i) for i in range(6)]
    boxes = torch.tensor([[x - 40, y - 60, x + 40, y + 60] for x, y in points]).cuda()
    frame = blob_frame(points).cuda()
    reference = engine(device="cuda")(frame, boxes)
    out = engine(backend, device="cuda", half=half)(frame, boxes)
    assert (out[..., :2] - reference[..., :2]).norm(dim=-1).max() < 0.5


@pytest.mark.cuda
@cuda
def test_gpu_fp16_crops_at_1080p_land_within_a_tenth_of_a_pixel_of_fp32():
    # Far from the origin fp16 spacing is 0.5-1 px; the crop geometry must stay float32.
    points = [(1500.3 + 60 * i, 900.7 + 25 * i) for i in range(5)]
    boxes = torch.tensor([[x - 40, y - 60, x + 40, y + 60] for x, y in points]).cuda()
    frame = blob_frame(points, size=(1080, 1920)).cuda()
    fp32 = engine(device="cuda")(frame, boxes)
    fp16 = engine(device="cuda", half=True)(frame, boxes)
    err = (fp16[..., :2] - fp32[..., :2]).norm(dim=-1)
    assert err.max() < 0.1, err.max()
    assert (fp32[:, 0, :2] - torch.tensor(points).cuda()).norm(dim=-1).max() < 0.05


@pytest.mark.cuda
@cuda
def test_gpu_real_network_fp16_and_compile_agree_with_fp32():
    # Trained weights on a frame of the demo clip: heatmaps peak near 1, well inside fp16's range
    # (a random network's are about 1e-15 and flush to 0 in fp16). Simulated in fp16 on the
    # CPU the scores differ by 4e-4 and the keypoints by 0.06 px.
    import av

    from ccm.checkpoint import load_checkpoint
    from realtime.samples import SYNTHETIC_WALK

    model, pose = load_checkpoint(DEMO_POSE)
    with av.open(str(SYNTHETIC_WALK)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    frame = torch.from_numpy(image).permute(2, 0, 1)[None].float().cuda()
    # Two walkers of the clip's first frame, from its ground truth (x1, y1, x2, y2).
    boxes = torch.tensor([[852.5, 177.5, 959.5, 530.5], [787.5, 170.5, 863.5, 336.5]]).cuda()
    ref = PoseEstimator(
        model, pose, PoseStageConfig(device="cuda", precision="fp32", blur_kernel=0)
    )
    half = PoseEstimator(
        model, pose, PoseStageConfig(device="cuda", half=True, backend="compile", blur_kernel=0,
                                  batch_buckets=(1, 2, 4)),
    )  # fmt: skip
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    a, b = ref(frame, boxes), half(frame, boxes)
    assert a[..., 2].min() > 0.2, a[..., 2]
    assert (a[..., 2] - b[..., 2]).abs().max() < 1e-2 * a[..., 2].abs().max()
    assert (a[..., :2] - b[..., :2]).norm(dim=-1).max() < 0.3


def test_tensorrt_cache_key_changes_with_weights_precision_gpu_and_versions(monkeypatch):
    import sys
    import types

    from realtime.pose.tensorrt import tensorrt_cache_key

    versions = {"tensorrt": "10.9.0", "torch_tensorrt": "2.14.0"}
    for name, version in versions.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(__version__=version))
    gpu = {"name": "NVIDIA H200"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu["name"])

    def key(model=None, dtype=torch.float16, max_batch=64) -> str:
        return tensorrt_cache_key(model or DotFinder(), POSE, dtype, "cuda", max_batch)

    base = key()
    assert "H200" in base and "float16" in base and "trt2.14.0" in base and "b1-64" in base
    assert key() == base  # the same inputs find the same engine
    other_weights = DotFinder()
    with torch.no_grad():
        other_weights.scale.fill_(2.0)
    assert key(other_weights) != base
    assert key(dtype=torch.float32) != base
    assert key(max_batch=32) != base
    gpu["name"] = "NVIDIA H100 80GB HBM3"
    assert key() != base
    gpu["name"] = "NVIDIA H200"
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.10.0"))
    assert key() != base


def test_a_chunk_of_people_is_split_by_the_image_each_came_from():
    from realtime.pose.estimator import _segments

    ends = [2, 2, 5, 9]  # image 1 has nobody; images 2 and 3 have 3 and 4 people
    assert _segments(ends, 0, 4) == [(0, 2), (2, 2)]
    assert _segments(ends, 4, 8) == [(2, 1), (3, 3)]
    assert _segments(ends, 8, 9) == [(3, 1)]
    # Every person of a crowd over four frames, chunked by 4 on eager, as one frame at a time.
    points = [[(60.0 + 90 * j, 120.0) for j in range(n)] for n in (2, 0, 3, 4)]
    frames = torch.cat([blob_frame(p) for p in points])
    boxes = torch.tensor([[x - 40, y - 70, x + 50, y + 60] for p in points for x, y in p])
    est = engine(batch_buckets=(1, 2, 4))
    both = est(frames, boxes, counts=[len(p) for p in points])
    flat = torch.tensor([xy for p in points for xy in p])
    assert both.shape == (9, 17, 3) and (both[:, 0, :2] - flat).norm(dim=-1).max() < 0.05


def test_uint8_cpu_frames_are_cut_as_the_float_warp_cuts_them():
    from ccm.geometry import box_to_center_scale, warp_crops
    from realtime.pose.estimator import _cpu_crops

    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (2, 3, 270, 480), generator=g, dtype=torch.uint8)
    boxes = torch.tensor([[100.3, 50.7, 300.2, 260.9], [-50.0, -20.0, 200.0, 300.0],
                          [400.0, 200.0, 520.0, 330.0]])  # fmt: skip
    center, scale = box_to_center_scale(boxes, aspect_ratio=SIZE[1] / SIZE[0])
    cut = _cpu_crops(frames, [(0, 2), (1, 1)], center, scale, SIZE)
    assert cut.dtype == torch.uint8 and cut.shape == (3, 3, *SIZE)
    for k, image in enumerate((0, 0, 1)):
        exact = warp_crops(frames[image : image + 1].float(), None, center[k : k + 1],
                           scale[k : k + 1], SIZE)  # fmt: skip
        # The same bilinear samples, rounded to uint8; zeros outside the frame as well.
        assert (cut[k : k + 1].float() - exact).abs().max() <= 0.51
    # Through the pose stage: the same keypoints as float frames give.
    points = [(120.3, 150.6), (300.8, 200.2)]
    image = blob_frame(points)
    boxes = torch.tensor([[x - 40, y - 70, x + 50, y + 60] for x, y in points])
    est = engine()
    as_uint8 = est(image.round().clamp(0, 255).to(torch.uint8), boxes)
    # OpenCV's fixed-point warp places its samples to 1/32 px: keypoints agree to 0.03 px.
    torch.testing.assert_close(as_uint8, est(image.round().clamp(0, 255), boxes), rtol=0, atol=0.03)


def test_cpu_eager_fuses_the_activations_and_keeps_the_keypoints(monkeypatch):
    import realtime.pose.estimator as engine_module

    torch.manual_seed(0)
    model = POSE.build_model().eval()
    frame, box = blob_frame([(200.0, 180.0)]), torch.tensor([[150.0, 100.0, 250.0, 260.0]])
    fused = PoseEstimator(model, POSE, PoseStageConfig(backend="eager", precision="fp32"))
    assert fused.describe()["activations_fused"] is True
    monkeypatch.setattr(engine_module, "fuse_activations", lambda network, example: network)
    plain = PoseEstimator(model, POSE, PoseStageConfig(backend="eager", precision="fp32"))
    assert plain.describe()["activations_fused"] is False
    torch.testing.assert_close(fused(frame, box), plain(frame, box), rtol=0, atol=1e-3)
