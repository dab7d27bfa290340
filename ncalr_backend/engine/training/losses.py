"""Losses: pick-all-labels (multi-label, seed 002) and logit-adjusted cross-entropy (long tail)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pal_loss(logits: torch.Tensor, targets: torch.Tensor, average: bool = False, check: bool = True) -> torch.Tensor:
    """Pick-all-labels loss (Li et al., arXiv 2310.15903): for a sample with label set S,
    sum_{k in S} CE(z, e_k) = sum_k y_k (logsumexp(z) - z_k); ``average`` divides by |S| (the
    soft-target form of the released code). logits [B, K], targets multi-hot [B, K]. Batch mean.
    ``check=False`` leaves out the every-sample-has-a-label check (a host sync) for a caller that
    checked its whole label set once (the trainer's loss, which a CUDA graph may capture).
    """
    targets = targets.to(logits.dtype)
    if check and (targets.sum(1) < 1).any():
        raise ValueError("every sample needs at least one label for the PAL loss")
    per = (targets * (torch.logsumexp(logits, 1, keepdim=True) - logits)).sum(1)  # [B]
    if average:
        per = per / targets.sum(1)
    return per.mean()


def logit_adjusted_ce(logits: torch.Tensor, y: torch.Tensor, class_counts: torch.Tensor,
                      tau: float = 1.0) -> torch.Tensor:
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): CE(z + tau log pi, y), pi the class
    prior from the training counts. The usual long-tail baseline; at test time plain argmax z."""
    prior = class_counts.to(logits.dtype).clamp_min(1)
    prior = prior / prior.sum()
    return F.cross_entropy(logits + tau * torch.log(prior)[None, :], y)
