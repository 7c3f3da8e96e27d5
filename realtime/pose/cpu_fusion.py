"""Convolutions and the activations after them as one oneDNN call, for eager inference on a CPU.

Once batch norms are folded (`ccm.fold`), a small pose network spends about a third of its CPU
time in separate passes over each convolution's output: ReLU6, ReLU, sigmoid. oneDNN can apply
such an activation inside the convolution (a post-op), as torch.compile's CPU backend does; here
it is done in eager mode, with nothing to compile: 1x1 convolution + ReLU6 takes half the time.
The weights are also reordered once into oneDNN's blocked layout (torch.compile's weight
prepacking), which eager convolutions otherwise redo on every call: on a 2-core AMX Xeon the demo
pose network runs 16 crops in 40 ms instead of 55.

`fuse_activations` sees the pairs `ccm.fold.fold_batch_norms` sees, without tracing the forward:
a convolution followed by an activation among the children of an `nn.Sequential` (identities
that folding left between them skipped), and a module whose only children are one convolution,
one activation and identities (a ConvModule: `act(bn(conv(x)))` once folded). A module only
suggests that order, so the fused copy is checked against the original on an example input and
dropped if they disagree.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _post_op(module: nn.Module) -> tuple[str, list[float]] | None:
    """oneDNN's name and scalars for an activation module, or None."""
    if isinstance(module, nn.ReLU):
        return "relu", []
    if isinstance(module, nn.Hardtanh):  # ReLU6 too
        return "hardtanh", [float(module.min_val), float(module.max_val)]
    if isinstance(module, nn.Sigmoid):
        return "sigmoid", []
    return None


class FusedConv(nn.Module):
    """`activation(conv(x))` in one oneDNN convolution with the activation as its post-op."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, attr: str, scalars: list[float]):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach(), requires_grad=False)
        bias = conv.bias.detach() if conv.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.output_padding = list(conv.output_padding) if self.transposed else []
        self.attr, self.scalars = attr, scalars

    def pack(self, input_shape: list[int]) -> None:
        """Reorder the weight into oneDNN's layout for inputs of about this shape (any other
        shape still gives the same result)."""
        ops, w = torch.ops.mkldnn, self.weight.detach()
        if self.transposed:
            args = (self.padding, self.output_padding, self.stride, self.dilation, self.groups)
            packed = ops._reorder_convolution_transpose_weight(w, *args, input_shape)
        else:
            args = (self.padding, self.stride, self.dilation, self.groups)
            packed = ops._reorder_convolution_weight(w, *args, input_shape)
        self.weight = nn.Parameter(packed, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        ops = torch.ops.mkldnn
        if self.transposed:
            return ops._convolution_transpose_pointwise(
                x, self.weight, self.bias, self.padding, self.output_padding, self.stride,
                self.dilation, self.groups, self.attr, self.scalars, "",
            )  # fmt: skip
        return ops._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.attr, self.scalars, "",
        )  # fmt: skip


def _fusable(conv: nn.Module) -> bool:
    return (
        isinstance(conv, _CONVS)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _fuse_in_place(module: nn.Module) -> int:
    """Fuse every visible convolution + activation below `module`; returns how many."""
    count = sum(_fuse_in_place(child) for child in module.children())
    children = list(module._modules.items())
    if isinstance(module, nn.Sequential):
        pending = None  # name of a convolution waiting for its activation
        for name, child in children:
            if isinstance(child, nn.Identity):
                continue
            post = _post_op(child)
            if pending is not None and post is not None:
                module._modules[pending] = FusedConv(module._modules[pending], *post)
                module._modules[name] = nn.Identity()
                count += 1
            pending = name if _fusable(child) else None
        return count
    convs = [(n, c) for n, c in children if isinstance(c, _CONVS)]
    acts = [(n, c) for n, c in children if _post_op(c) is not None]
    others = len(children) - len(convs) - len(acts)
    others -= sum(isinstance(c, nn.Identity) for _, c in children)
    if len(convs) == 1 and len(acts) == 1 and others == 0 and _fusable(convs[0][1]):
        (conv_name, conv), (act_name, act) = convs[0], acts[0]
        setattr(module, conv_name, FusedConv(conv, *_post_op(act)))
        setattr(module, act_name, nn.Identity())
        count += 1
    return count


def available() -> bool:
    """Whether this torch build has oneDNN's fused convolutions."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise")


@torch.inference_mode()
def fuse_activations(model: nn.Module, example: Tensor, tolerance: float = 1e-2) -> nn.Module:
    """A copy of the eval-mode CPU `model` with its convolution + activation pairs fused and
    their weights packed, or `model` itself when there is none, oneDNN lacks the ops, or fusing
    changes the output on `example` by more than `tolerance` (relative to its largest value;
    the fused ops round once less, which in bf16 is a few thousandths). Make it the last change
    to the network: packed weights move to no other dtype or device. The caller's model is not
    modified."""
    if not available():
        return model
    fused = copy.deepcopy(model)
    count = _fuse_in_place(fused)
    if count == 0:
        return model
    shapes: dict[FusedConv, list[int]] = {}  # each one's input, to pack its weight for

    def record(module: nn.Module, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        shapes.setdefault(module, list(inputs[0].shape))

    hooks = [m.register_forward_hook(record) for m in fused.modules() if isinstance(m, FusedConv)]
    reference, output = model(example).float(), fused(example).float()
    for hook in hooks:
        hook.remove()
    error = float((output - reference).abs().max() / reference.abs().max().clamp(min=1e-12))
    if not error <= tolerance:
        logger.warning("fusing activations changed the output by %.2g; running unfused", error)
        return model
    logger.debug("fused %d convolution + activation pairs (relative change %.2g)", count, error)
    for module, shape in shapes.items():
        module.pack(shape)
    return fused
