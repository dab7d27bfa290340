"""PAL, logit-adjusted CE and the space-alignment updates against hand computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncalr_backend.engine.training.longtail import ClassCentres, slerp_alpha, spa_proj_, spa_reg_loss, spa_slerp_
from ncalr_backend.engine.training.losses import logit_adjusted_ce, pal_loss


def test_pal_loss_by_hand():
    z = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([[1, 1, 0], [0, 0, 1]])
    lse0 = math.log(math.e ** 1 + math.e ** 2 + 1)
    lse1 = math.log(2 * math.e ** 0.5 + math.e ** 3)
    by_hand = ((lse0 - 1) + (lse0 - 2) + (lse1 - 3)) / 2
    assert pal_loss(z, y).item() == pytest.approx(by_hand, rel=1e-6)
    assert pal_loss(z, y, average=True).item() == pytest.approx((((lse0 - 1) + (lse0 - 2)) / 2 + (lse1 - 3)) / 2, rel=1e-6)
    # one label per sample: PAL is plain cross-entropy
    assert pal_loss(z, F.one_hot(torch.tensor([1, 2]), 3)).item() == pytest.approx(F.cross_entropy(z, torch.tensor([1, 2])).item())
    with pytest.raises(ValueError):
        pal_loss(z, torch.zeros(2, 3))


def test_logit_adjusted_ce_by_hand():
    z = torch.tensor([[0.2, 0.1]]); y = torch.tensor([1]); counts = torch.tensor([90.0, 10.0])
    adj = np.array([0.2 + math.log(0.9), 0.1 + math.log(0.1)])
    by_hand = -(adj[1] - math.log(np.exp(adj).sum()))
    assert logit_adjusted_ce(z, y, counts).item() == pytest.approx(by_hand, rel=1e-6)


def _centres(mu):
    c = ClassCentres(len(mu), len(mu[0]))
    c.mu = torch.tensor(mu, dtype=torch.float32); c.seen[:] = True
    return c


def test_spa_proj_removes_exactly_the_opposing_component():
    W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cen = _centres([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])  # mean 0: m_0 = (1,1,0)/sqrt2
    g = torch.tensor([[0.5, 2.0, 1.0], [0.0, 0.0, 0.0]])
    out = spa_proj_(g.clone(), W, cen, gamma=0.0)
    # class 0: w_hat = e1, g_perp = (0, 2, 1); d = normalize(m - (m.e1) e1) = e2; g_perp.d = 2 > 0
    # -> the e2 component is removed: (0, 0, 1)
    np.testing.assert_allclose(out[0].numpy(), [0.0, 0.0, 1.0], atol=1e-6)
    # gamma mixes back the raw gradient: (1 - gamma) g_perp + gamma g
    out = spa_proj_(g.clone(), W, cen, gamma=0.5)
    np.testing.assert_allclose(out[0].numpy(), 0.5 * np.array([0, 0, 1.0]) + 0.5 * g[0].numpy(), atol=1e-6)
    # a gradient whose perpendicular part already points away from d (g_perp.d <= 0) is only made perpendicular
    g2 = torch.tensor([[0.3, -1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(spa_proj_(g2.clone(), W, cen, gamma=0.0)[0].numpy(), [0.0, -1.0, 0.0], atol=1e-6)
    # gamma = 1 disables it
    np.testing.assert_allclose(spa_proj_(g.clone(), W, cen, gamma=1.0).numpy(), g.numpy(), atol=1e-6)


def test_spa_slerp_keeps_norm_and_moves_by_the_right_angle():
    W = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    cen = _centres([[0.0, 1.0], [0.0, 1.0]])  # class 0 is 90 degrees away, class 1 already aligned
    out = spa_slerp_(W.clone(), cen, alpha=0.25)
    assert out[0].norm().item() == pytest.approx(3.0, rel=1e-6)
    angle = math.degrees(math.acos(out[0, 0].item() / 3.0))
    assert angle == pytest.approx(22.5, abs=1e-3)  # a quarter of 90 degrees
    np.testing.assert_allclose(out[1].numpy(), [0.0, 2.0])  # cos > 0.95: skipped
    assert slerp_alpha(0.02, 0, 10) == 0 and slerp_alpha(0.02, 10, 10) == pytest.approx(0.02)


def test_spa_reg_and_centres():
    cen = ClassCentres(2, 2, momentum=0.9)
    cen.update(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 1]))
    np.testing.assert_allclose(cen.mu.numpy(), [[2.0, 0.0], [0.0, 1.0]])  # first sighting: batch mean
    cen.update(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
    np.testing.assert_allclose(cen.mu[0].numpy(), [1.8, 0.2], atol=1e-6)  # 0.9 * (2, 0) + 0.1 * (0, 2)
    W = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = spa_reg_loss(W, cen, lam=2.0)
    cos0 = 1.8 / math.hypot(1.8, 0.2)
    assert loss.item() == pytest.approx(2.0 * ((1 - cos0) + (1 - 0.0)) / 2, rel=1e-5)
    loss.backward()
    assert W.grad is not None and cen.mu.grad is None


def _alignment(res, x, y):
    """Mean cosine between each classifier row and its class's mean feature (final model)."""
    import torch

    with torch.no_grad():
        h = res.model.features(torch.as_tensor(x)).numpy()
    W = res.model.fc.weight.detach().numpy()
    cos = []
    for c in np.unique(y):
        mu = h[y == c].mean(0)
        cos.append(W[c] @ mu / (np.linalg.norm(W[c]) * np.linalg.norm(mu) + 1e-12))
    return float(np.mean(cos))


def test_long_tail_options_train_and_take_effect():
    from ncalr_backend.engine.config import EngineConfig
    from ncalr_backend.data.digits import load_digits_images
    from ncalr_backend.engine import run_cycle

    x, y = load_digits_images()
    idx = np.concatenate([np.flatnonzero(y == c)[: (12 if c < 2 else 3)] for c in range(4)])  # long-tailed
    xl, yl = x[idx], y[idx]
    # the rate and the step count (3 epochs of one step) the margins below were set at
    base = EngineConfig(max_epochs=3, tpt_window=1, augment=False, lr=0.05, min_steps_per_epoch=1)
    runs = {}
    for name, opts in {"none": {}, "slerp": dict(spa="slerp", spa_alpha_max=0.5),
                       "reg": dict(spa="reg", spa_lambda=20.0), "proj": dict(spa="proj"),
                       "la": dict(loss="logit_adjusted")}.items():
        res = run_cycle(xl, yl, x[:10], 10, base.replace(**opts))
        assert all(np.isfinite(r["loss"]) for r in res.history), name
        assert res.diagnostics["geometry_target"] == "seli" and len(res.ranking) == 10
        runs[name] = _alignment(res, xl, yl)
    # SLERP rotates rows toward the class centres and Reg penalises their angle: both must align
    # the classifier with the features more than plain training from the same seed
    assert runs["slerp"] > runs["none"] + 0.05, runs
    assert runs["reg"] > runs["none"] + 0.05, runs
