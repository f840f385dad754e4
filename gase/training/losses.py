"""Losses of the alternating GASE training (MONAI DiceCE for segmentation)."""
from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch.nn import functional as F


def make_seg_loss() -> DiceCELoss:
    """Dice + cross-entropy on softmax logits (B, K, H, W) against integer labels (B, 1, H, W)."""
    return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5)


def confidence_loss(conf_logit: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the confidence logit (B, 1, H, W) against "the argmax label is right".

    A proper scoring rule, so the confidence estimates the probability of being right (ConfidNet-style
    correctness target; trained on the hard, diversified samples as well as the real ones).
    """
    correct = (logits.detach().argmax(1, keepdim=True) == y[:, None]).float()
    return F.binary_cross_entropy_with_logits(conf_logit, correct)


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def g_hinge(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


def diversity_loss(img_a: torch.Tensor, img_b: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """Mode-seeking regulariser: different styles must give visibly different images (minimise the negative
    ratio of image distance to style distance, bounded)."""
    num = (img_a - img_b).abs().mean(dim=(1, 2, 3))
    den = (w_a - w_b).abs().mean(dim=1) + 1e-5
    return -(num / den).clamp(max=1.0).mean()


def view_consistency(logits: torch.Tensor, n_views: int) -> torch.Tensor:
    """Jensen-Shannon divergence between the predictions on ``n_views`` style views of the same crops.

    ``logits`` (n_views * B, K, H, W), view-major (the order the views were concatenated in). Different
    styles of one anatomy must get one segmentation (AugMix-style consistency)."""
    p = torch.softmax(logits, 1).reshape(n_views, -1, *logits.shape[1:])
    m = p.mean(0, keepdim=True).clamp_min(1e-7)
    return (p * (p.clamp_min(1e-7).log() - m.log())).sum(2).mean()
