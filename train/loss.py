"""The training loss: Eq. (5), heatmap MSE with per-joint weights, and Eq. (6), main plus
auxiliary decoder."""

from __future__ import annotations

import torch
from torch import Tensor


def heatmap_mse(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Eq. (5) with per-joint target weights, as SimpleBaseline's JointsMSELoss computes it:
    the mean over joints of 0.5 * MSE(pred * w, target * w).

    pred, target (N, K, h, w) heatmaps; weights (N, K), 0 for unlabelled joints. Every joint
    has h * w * N elements, so the mean of per-joint means is the mean over all elements.
    Computed in float32 whatever the dtype of `pred` (AMP).
    """
    if pred.shape != target.shape or weights.shape != pred.shape[:2]:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and weights "
            f"{tuple(weights.shape)} do not fit (N, K, h, w), (N, K, h, w), (N, K)"
        )
    w = weights.float()[:, :, None, None]
    return 0.5 * ((pred.float() - target.float()) * w).square().mean()


def pose_loss(
    main: Tensor, aux: Tensor | None, target: Tensor, weights: Tensor, aux_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. (6): L = L_main + lambda * L_aux, both Eq. (5) against the same target.

    main, aux (N, K, h, w) (aux None for models without an auxiliary decoder); returns
    (L, L_main, L_aux) as float32 scalars.
    """
    loss_main = heatmap_mse(main, target, weights)
    loss_aux = heatmap_mse(aux, target, weights) if aux is not None else torch.zeros_like(loss_main)
    return loss_main + aux_weight * loss_aux, loss_main, loss_aux
