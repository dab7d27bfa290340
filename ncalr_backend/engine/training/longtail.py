"""Space alignment between feature and classifier spaces for long-tailed data (seed 001,
arXiv 2512.07844): per-class EMA feature centres and three plug-in strategies.

- SpA-Proj (``spa_proj_``): after backward, before the optimiser step, remove from each classifier
  row's gradient the component that pushes it away from its class centre.
- SpA-SLERP (``spa_slerp_``): after each step, rotate each row toward its class centre by a fraction
  of the angle, keeping its norm.
- SpA-Reg (``spa_reg_loss``): L += lambda * mean_c (1 - cos(w_c, stopgrad(m_c))).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = 1e-12


class ClassCentres:
    """mu_c <- a mu_c + (1 - a) mean(h | y = c) per batch, no gradient; first sighting sets mu_c."""

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.9, device=None):
        self.mu = torch.zeros(num_classes, dim, device=device)
        self.seen = torch.zeros(num_classes, dtype=torch.bool, device=device)
        self.a = momentum

    @torch.no_grad()
    def update(self, feats: torch.Tensor, y: torch.Tensor) -> None:
        feats = feats.detach().float()
        for c in torch.unique(y).tolist():
            m = feats[y == c].mean(0)
            self.mu[c] = torch.where(self.seen[c], self.a * self.mu[c] + (1 - self.a) * m, m)
            self.seen[c] = True


@torch.no_grad()
def spa_proj_(grad: torch.Tensor, W: torch.Tensor, centres: ClassCentres, gamma: float) -> torch.Tensor:
    """SpA-Proj on the classifier gradient ``grad`` [C, d] (in place), as in the released code:
    w_hat = w/|w|; g_perp = g - (g.w_hat) w_hat; m = normalize(mu_c - mean_j mu_j);
    d = normalize(m - (m.w_hat) w_hat); if g_perp.d > 0: g_perp -= (g_perp.d) d;
    new g = (1 - gamma) g_perp + gamma g. Classes not seen yet are left alone."""
    seen = centres.seen
    if seen.sum() < 2:
        return grad
    w_hat = F.normalize(W.float(), dim=1, eps=_EPS)
    g = grad.float()
    g_perp = g - (g * w_hat).sum(1, keepdim=True) * w_hat
    mu = centres.mu
    m = F.normalize(mu - mu[seen].mean(0, keepdim=True), dim=1, eps=_EPS)
    d = F.normalize(m - (m * w_hat).sum(1, keepdim=True) * w_hat, dim=1, eps=_EPS)
    dot = (g_perp * d).sum(1, keepdim=True)
    g_perp = g_perp - torch.where(dot > 0, dot, torch.zeros_like(dot)) * d
    new = (1 - gamma) * g_perp + gamma * g
    grad[seen] = new[seen].to(grad.dtype)
    return grad


def slerp_alpha(alpha_max: float, step: int, total: int) -> float:
    """alpha_t = alpha_max * 0.5 (1 - cos(pi t / T))."""
    return alpha_max * 0.5 * (1 - math.cos(math.pi * min(step, total) / max(total, 1)))


@torch.no_grad()
def spa_slerp_(W: torch.Tensor, centres: ClassCentres, alpha: float, skip_cos: float = 0.95) -> torch.Tensor:
    """Rotate each row w_c toward normalize(mu_c) by the fraction ``alpha`` of the angle between
    them, keeping ||w_c|| (in place); rows already within cos > ``skip_cos`` are left alone."""
    norms = W.norm(dim=1, keepdim=True)
    a = F.normalize(W.float(), dim=1, eps=_EPS)
    b = F.normalize(centres.mu, dim=1, eps=_EPS)
    cos = (a * b).sum(1).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(cos)
    move = centres.seen & (cos <= skip_cos)
    s = torch.sin(theta)
    new = (torch.sin((1 - alpha) * theta) / s)[:, None] * a + (torch.sin(alpha * theta) / s)[:, None] * b
    W[move] = (new[move] * norms[move]).to(W.dtype)
    return W


def spa_reg_loss(W: torch.Tensor, centres: ClassCentres, lam: float) -> torch.Tensor:
    """lambda * mean over seen classes of (1 - cos(w_c, stopgrad(mu_c)))."""
    seen = centres.seen
    if not seen.any():
        return W.sum() * 0
    cos = F.cosine_similarity(W[seen], centres.mu[seen].detach(), dim=1)
    return lam * (1 - cos).mean()
