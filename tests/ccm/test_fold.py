import pytest
import torch
from torch import nn

from ccm.fold import fold_batch_norms, fold_conv_bn
from ccm.model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_batch_norms(model: nn.Module) -> None:
    """Statistics far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize(
    "arch", ["ccm_mobilenetv2", "ccm_resnet50", "ccm_hrnet_w32", "ccm_shufflenetv2",
             "simplebaseline_resnet50", "hrnet_w32"],
)  # fmt: skip
def test_every_batch_norm_folds_and_the_output_stays(arch):
    torch.manual_seed(0)
    model = build_model(arch, 17, (64, 64)).eval()
    randomise_batch_norms(model)
    x = torch.randn(2, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model, x)
    assert folded is not model and count(model, nn.BatchNorm2d) > 50
    assert count(folded, nn.BatchNorm2d) == 0
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("transposed", [False, True])
def test_one_conv_and_its_batch_norm_become_one_conv(transposed):
    torch.manual_seed(1)
    kind = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = kind(6, 8, 3, padding=1, groups=2, bias=True)
    bn = nn.BatchNorm2d(8).eval()
    randomise_batch_norms(bn)
    x = torch.randn(3, 6, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_a_pair_that_is_not_bn_of_conv_is_left_unfolded():
    class Between(nn.Module):
        """conv and bn as attributes, with a ReLU between them: not foldable."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(torch.relu(self.conv(x)))

    model = Between().eval()
    randomise_batch_norms(model)
    assert fold_batch_norms(model, torch.randn(2, 3, 8, 8)) is model
    assert count(model, nn.BatchNorm2d) == 1
