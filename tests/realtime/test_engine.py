import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccm.checkpoint import PoseConfig
from realtime.engine import IMAGENET_MEAN, IMAGENET_STD, EngineConfig, PoseEngine

SIZE = (128, 96)
POSE = PoseConfig("ccm_mobilenetv2", input_size=SIZE)


class DotFinder(nn.Module):
    """Heatmaps = the crop's red channel, average-pooled by the stride: a perfect model for a
    frame whose only content is a bright blob, so the whole crop -> heatmap -> image chain is
    checked without trained weights."""

    def __init__(self, num_keypoints: int = 17) -> None:
        super().__init__()
        self.k = num_keypoints
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so .to(dtype) has work to do

    def forward(self, x):
        red = x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        return (F.avg_pool2d(red, 4) * self.scale).expand(-1, self.k, -1, -1)


def blob_frame(points, size=(360, 480), sigma=5.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    frame = torch.zeros(1, 3, *size)
    for x, y in points:
        frame[0, 0] += 255 * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return frame


def engine(backend="eager", **kw) -> PoseEngine:
    return PoseEngine(
        DotFinder(), POSE, EngineConfig(backend=backend, decoder="dark", blur_kernel=0, **kw)
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


def test_no_people_gives_an_empty_result():
    for backend in ("eager", "compile"):
        out = engine(backend)(blob_frame([]), torch.zeros(0, 4))
        assert out.shape == (0, 17, 3)


def test_compiled_backend_with_buckets_matches_eager():
    points = [(100.0 + 60 * i, 120.0 + 20 * i) for i in range(5)]
    boxes = torch.tensor([[x - 40, y - 60, x + 40, y + 60] for x, y in points])
    frame = blob_frame(points)
    eager = engine()(frame, boxes)
    compiled = engine("compile", batch_buckets=(2, 4))
    assert compiled.bucket_for(3) == 4 and compiled.bucket_for(9) == 4
    # Five people with buckets up to 4 run as a chunk of 4 and a chunk of 1 (padded to 2).
    torch.testing.assert_close(compiled(frame, boxes), eager, rtol=0, atol=1e-3)
    torch.testing.assert_close(compiled(frame, boxes[:3]), eager[:3], rtol=0, atol=1e-3)


def test_real_network_runs_on_a_frame():
    torch.manual_seed(0)
    model = POSE.build_model()
    out = PoseEngine(model, POSE, EngineConfig())(
        blob_frame([(200.0, 180.0)]), torch.tensor([[150.0, 100.0, 250.0, 260.0]])
    )
    assert out.shape == (1, 17, 3) and torch.isfinite(out).all()


def test_bad_engine_settings_are_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        EngineConfig(backend="onnx")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        EngineConfig(half=True)
    with pytest.raises(ValueError, match="tensorrt backend needs a CUDA device"):
        EngineConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="increasing"):
        EngineConfig(batch_buckets=(4, 2))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize(
    ("backend", "half"), [("eager", True), ("compile", False), ("compile", True)]
)
def test_gpu_paths_match_eager_fp32_within_half_a_pixel(backend, half):
    points = [(100.0 + 50 * i, 100.0 + 30 * i) for i in range(6)]
    boxes = torch.tensor([[x - 40, y - 60, x + 40, y + 60] for x, y in points])
    frame = blob_frame(points).cuda()
    reference = engine(device="cuda")(frame, boxes)
    out = engine(backend, device="cuda", half=half)(frame, boxes)
    assert (out[..., :2] - reference[..., :2]).norm(dim=-1).max() < 0.5


@pytest.mark.cuda
@cuda
def test_gpu_real_network_fp16_and_compile_agree_with_fp32():
    torch.manual_seed(0)
    model = POSE.build_model()
    frame = blob_frame([(200.0, 180.0)]).cuda()
    boxes = torch.tensor([[150.0, 100.0, 250.0, 260.0], [100.0, 50.0, 300.0, 300.0]])
    ref = PoseEngine(model, POSE, EngineConfig(device="cuda"))
    half = PoseEngine(model, POSE, EngineConfig(device="cuda", half=True, backend="compile"))
    a, b = ref.crop(frame, boxes), half.crop(frame, boxes)
    ref.infer(a)
    half.infer(b)
    assert (a.heatmaps - b.heatmaps).abs().max() < 2e-2 * a.heatmaps.abs().max()
