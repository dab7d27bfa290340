"""The trainer and run_cycle on small synthetic data: terminal phase, shapes, reproducibility, errors."""
import json

import numpy as np
import torch
import pytest

from ncalr_backend.engine.config import ConfigError, EngineConfig
from ncalr_backend.engine import InputError, load_model, predict_proba, run_cycle


def separable(n_per=12, classes=4, size=8, seed=0):
    """Class k = a bright 2x2 block at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(classes):
        for _ in range(n_per):
            img = rng.uniform(0, 0.2, (1, size, size))
            r, c = divmod(k, 2)
            img[0, 2 + 3 * r:4 + 3 * r, 1 + 4 * c:3 + 4 * c] = 1.0
            xs.append(img); ys.append(k)
    return np.asarray(xs, dtype=np.float32), np.asarray(ys)


# one thread: with 0 (chosen from the load average) two runs can differ in float rounding on a busy machine
FAST = EngineConfig(max_epochs=25, tpt_window=3, batch_size=16, lr=0.05, augment=False, threads=1)


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    x, y = separable(n_per=8)
    px, py = separable(n_per=5, seed=1)
    out = tmp_path_factory.mktemp("cycle")
    return run_cycle(x, y, px, 4, FAST, out_dir=out), out, (x, y, px, py)


def test_reaches_terminal_phase_with_right_shapes(cycle):
    res, out, (x, y, px, py) = cycle
    M = len(px)
    assert res.tpt["reached"] and res.tpt["t_i"] is not None
    assert res.tpt["epochs"] == res.tpt["t_i"] + FAST.tpt_window
    assert len(res.tpt["checkpoints"]) == FAST.tpt_window + 1
    assert res.history[res.tpt["t_i"] - 1]["train_acc"] >= FAST.train_acc_threshold
    assert sorted(res.ranking) == list(range(M))
    assert res.probs.shape == (M, 4) and np.allclose(res.probs.sum(1), 1, atol=1e-5)
    assert set(res.scores) >= {"score", "cmap", "ff"} and all(len(v) == M for v in res.scores.values())
    assert (res.pred == py).mean() > 0.9  # the blocks are learnable
    for row in res.history:
        assert {"epoch", "loss", "train_acc", "lr", "nc1", "nc2_etf_means", "nc3", "nc4"} <= set(row)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["tpt"]["reached"] is True
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt", "scores.npz"]
    model, meta = load_model(out / "model.pt")
    assert meta["small_stem"] and meta["in_channels"] == 1
    np.testing.assert_allclose(predict_proba(model, px), res.probs, atol=1e-5)


def test_seeded_runs_are_reproducible_on_cpu(cycle):
    res, _, (x, y, px, _) = cycle
    again = run_cycle(x, y, px, 4, FAST)
    np.testing.assert_array_equal(again.ranking, res.ranking)
    np.testing.assert_allclose(again.scores["score"], res.scores["score"], atol=1e-6)


def test_honest_when_terminal_phase_not_reached():
    x, y = separable(n_per=6)
    rng = np.random.default_rng(0)
    y_noisy = rng.permutation(y)  # random labels cannot be memorised in 3 epochs
    res = run_cycle(x, y_noisy, x[:5], 4, FAST.replace(max_epochs=3, tpt_window=2))
    assert res.tpt["reached"] is False and res.tpt["t_i"] is None and res.tpt["epochs"] == 3
    # FF falls back to the last window before the cap, with as many checkpoints as a reached window
    assert res.tpt["checkpoints"] == [1, 2, 3]


def test_warm_start_loads_previous_weights(cycle):
    res, _, (x, y, px, _) = cycle
    warm = run_cycle(x, y, px, 4, FAST.replace(warm_start=True), init_state=res.model_state)
    cold = run_cycle(x, y, px, 4, FAST.replace(warm_start=False), init_state=res.model_state)
    assert warm.meta["warm_started"] and not cold.meta["warm_started"]
    assert warm.tpt["t_i"] <= cold.tpt["t_i"]  # already fits the data


def test_rgb_and_empty_pool():
    x, y = separable(n_per=4)
    rgb = np.repeat(x, 3, axis=1)
    res = run_cycle(rgb, y, rgb[:0], 4, FAST.replace(max_epochs=2, tpt_window=1, strategy="entropy"))
    assert len(res.ranking) == 0 and res.meta["in_channels"] == 3


@pytest.mark.parametrize("bad, match", [
    (dict(x_lab=np.zeros((4, 8, 8))), r"\[N, C, H, W\]"),
    (dict(y_lab=np.array([0, 1, 2, 9])), r"0\.\.3"),
    (dict(x_lab=np.full((4, 1, 8, 8), 2.0)), r"\[0, 1\]"),
    (dict(x_pool=np.zeros((3, 1, 6, 6))), "like x_lab"),
    (dict(x_lab=np.zeros((1, 1, 8, 8)), y_lab=np.array([0])), "at least 2"),
    # found by review: fractional ids were truncated to another class (1.9 trained as 1)
    (dict(y_lab=np.array([0.0, 0.7, 1.9, 1.0])), r"integer class ids; rows \[1, 2\]"),
    (dict(y_lab=np.array([0.0, np.nan, 1.0, 2.0])), r"integer class ids; rows \[1\]"),
])
def test_bad_input_is_refused_with_a_clear_message(bad, match):
    args = dict(x_lab=np.zeros((4, 1, 8, 8), np.float32), y_lab=np.array([0, 1, 2, 3]),
                x_pool=np.zeros((3, 1, 8, 8), np.float32))
    args.update(bad)
    with pytest.raises(InputError, match=match):
        run_cycle(args["x_lab"], args["y_lab"], args["x_pool"], 4, FAST)


def test_config_validation_and_env():
    with pytest.raises(ConfigError, match="strategy='bogus'"):
        EngineConfig(strategy="bogus")
    with pytest.raises(ConfigError, match="tpt_window"):
        EngineConfig(tpt_window=0)
    cfg = EngineConfig.from_env(environ={"NCALR_MAX_EPOCHS": "7", "NCALR_CMAP_SIGN": "neg",
                                         "NCALR_AUGMENT": "false", "OTHER": "x"})
    assert (cfg.max_epochs, cfg.cmap_sign, cfg.augment) == (7, "neg", False)
    with pytest.raises(ConfigError, match="not a valid int"):
        EngineConfig.from_env(environ={"NCALR_MAX_EPOCHS": "seven"})
    with pytest.raises(ConfigError, match="unknown engine settings"):
        EngineConfig.from_mapping({"max_epoch": "3"})


def test_warm_start_is_on_off_or_chosen_by_width():
    """warm_start: on / off / auto (on up to width 8, off above); bools and true/false words are
    read as on/off, one spelling kept; anything else is refused with the choices."""
    assert [EngineConfig(width=w, warm_start="auto").warms for w in (4, 8, 16, 64)] == [True, True, False, False]
    assert [EngineConfig(width=w, warm_start="on").warms for w in (8, 64)] == [True, True]
    assert [EngineConfig(width=w, warm_start="off").warms for w in (8, 64)] == [False, False]
    assert EngineConfig(warm_start=True).warm_start == "on" and EngineConfig(warm_start=False).warm_start == "off"
    assert EngineConfig(width=8, warm_start="auto").replace(width=64).warms is False  # not fixed at construction
    for raw, want in (("true", "on"), ("FALSE", "off"), ("1", "on"), ("no", "off"), (" Auto ", "auto")):
        assert EngineConfig.from_env(environ={"NCALR_WARM_START": raw}).warm_start == want
    with pytest.raises(ConfigError, match="warm_start='sometimes': choose one of"):
        EngineConfig(warm_start="sometimes")


@pytest.mark.parametrize("name", ["strategy", "cmap_set_mass", "cmap_sign", "diversity", "fusion", "ff_mode",
                                  "lr_schedule", "loss", "spa", "classifier", "device", "serve", "tpt_criterion",
                                  "tpt_cap_window"])
def test_a_setting_of_words_refuses_an_unknown_word_and_names_the_choices(name):
    """Every setting that takes one of a list of words: its default is one of them, and an unknown
    word (also from the environment) is refused with the setting's name, the word and the choices,
    all problems in one error."""
    default = getattr(EngineConfig(), name)
    with pytest.raises(ConfigError, match=rf"{name}='nonsense': choose one of \[.*{default!r}") as err:
        EngineConfig.from_env(environ={f"NCALR_{name.upper()}": "nonsense"})
    assert "invalid engine settings" in str(err.value)
    with pytest.raises(ConfigError) as err:
        EngineConfig.from_mapping({name: "nonsense", "width": "2"})
    assert f"{name}='nonsense'" in str(err.value) and "width=2: must be >= 4" in str(err.value)


def test_learning_rate_is_chosen_by_width_unless_set():
    """lr = 0 (the default): 0.05 up to width 8, 0.05 x 8 / width above it (the head reads 8 x width
    features); a set lr is used at every width; a negative one is refused. With warm_start = auto
    (the default) the product's width 64 trains every cycle from scratch at 0.00625, and width 8
    (the CPU grid and demo) warm-starts at 0.05 as before."""
    assert EngineConfig().lr == 0 and EngineConfig().warm_start == "auto"
    assert (EngineConfig(width=64).base_lr, EngineConfig(width=64).warms) == (pytest.approx(0.00625), False)
    assert (EngineConfig(width=8).base_lr, EngineConfig(width=8).warms) == (0.05, True)
    assert [EngineConfig(width=w, lr=0).base_lr for w in (4, 8, 16, 64)] == pytest.approx([0.05, 0.05, 0.025, 0.00625])
    assert [EngineConfig(width=w, lr=0.2).base_lr for w in (4, 64)] == [0.2, 0.2]
    assert EngineConfig.from_env(environ={"NCALR_LR": "0.01", "NCALR_WIDTH": "64"}).base_lr == 0.01
    assert EngineConfig(width=8, lr=0).replace(width=64).base_lr == pytest.approx(0.00625)  # not fixed at construction
    with pytest.raises(ConfigError, match="lr must be >= 0"):
        EngineConfig(lr=-0.1)


def test_training_runs_at_the_width_chosen_rate():
    """The trainer's optimiser and the epoch history use ``base_lr`` (constant before T_i)."""
    x, y = separable(n_per=4)
    cfg = FAST.replace(lr=0.0, width=16, max_epochs=2, tpt_window=1, train_acc_threshold=1.0, lr_schedule="constant")
    res = run_cycle(x, y, x[:4], 4, cfg)
    assert [h["lr"] for h in res.history] == pytest.approx([0.025, 0.025])
    assert res.meta["lr"] == pytest.approx(0.025)  # the config says 0; the record says what was used


def test_a_cold_start_trains_at_cold_lr_and_a_warm_start_at_lr():
    """cold_lr: the rate of a cycle that does not warm-start (0 = chosen by width); a warm-started
    cycle keeps ``lr``; -1 (the default) is ``lr`` for both; the report says what was used."""
    x, y = separable(n_per=4)
    cfg = FAST.replace(lr=0.05, cold_lr=0.0, width=16, max_epochs=2, tpt_window=1, train_acc_threshold=1.0,
                       lr_schedule="constant")
    cold = run_cycle(x, y, x[:4], 4, cfg)
    assert [h["lr"] for h in cold.history] == pytest.approx([0.025, 0.025]) and cold.meta["lr"] == pytest.approx(0.025)
    warm = run_cycle(x, y, x[:4], 4, cfg.replace(warm_start=True), init_state=cold.model_state)
    assert warm.meta["warm_started"] and [h["lr"] for h in warm.history] == pytest.approx([0.05, 0.05])
    assert run_cycle(x, y, x[:4], 4, cfg.replace(cold_lr=-1)).meta["lr"] == pytest.approx(0.05)
    assert run_cycle(x, y, x[:4], 4, cfg.replace(warm_start=False, cold_lr=0.01), init_state=cold.model_state
                     ).meta["lr"] == pytest.approx(0.01)  # warm start off: every cycle is cold
    with pytest.raises(ConfigError, match="cold_lr"):
        EngineConfig(cold_lr=-0.5)


def test_local_pretrained_weights_initialise_the_backbone(tmp_path):
    import torch
    import torchvision

    from ncalr_backend.engine.training.model import build_model

    src = torchvision.models.resnet18(weights=None)  # a torchvision-format file, as an admin would have
    torch.nn.init.constant_(src.layer3[0].conv1.weight, 0.125)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    model = build_model(10, 1, 8, pretrained_path=str(path))  # grayscale, small stem: conv1 and fc do not fit
    assert torch.all(model.backbone.layer3[0].conv1.weight == 0.125)
    assert model.backbone.conv1.weight.shape == (64, 1, 3, 3)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_model(10, 1, 8, pretrained_path=str(tmp_path / "missing.pth"))


def test_rerank_equals_a_cycle_run_with_that_strategy(cycle):
    from ncalr_backend.engine import rerank

    res, _, (x, y, px, _) = cycle
    for name in ("entropy", "cmap", "ff"):
        direct = run_cycle(x, y, px, 4, FAST.replace(strategy=name)) if name == "entropy" else None
        ranking, scores, _ = rerank(res, FAST.replace(strategy=name))
        assert sorted(ranking) == list(range(len(px)))
        if direct is not None:  # same seed, same training: the same model and the same order
            np.testing.assert_array_equal(ranking, direct.ranking)
        assert np.all(np.diff(scores["score"][ranking]) <= 1e-12)  # served highest score first
    # the components, recomputed independently of the strategies from what the training recorded
    from ncalr_backend.engine.geometry import class_geometry, cmap_bruteforce

    v = res.view
    _, scores, _ = rerank(res, FAST.replace(strategy="cmap"))
    geom = class_geometry(v.feats_lab, v.y_lab, 4, centered=True)
    # CMAP is a difference of cosines (here |CMAP| <= 3e-4): the fast float32 path agrees with the
    # brute force to a small fraction of the largest value, not to 1e-9 absolute (which held on one
    # CPU and failed by 2.8e-9 on an AMD EPYC: found 2026-12-02); a wrong formula is off by ~100%
    bf = cmap_bruteforce(geom, v.feats, v.probs.argmax(1))
    np.testing.assert_allclose(scores["cmap"], bf, rtol=1e-6, atol=1e-4 * float(np.abs(bf).max()))
    assert np.abs(bf).max() > 0
    np.testing.assert_array_equal(scores["score"], scores["cmap"])  # cmap_sign=pos: the score is CMAP itself
    _, scores, _ = rerank(res, FAST.replace(strategy="ff"))
    hist = np.asarray(v.pred_history)
    assert len(hist) >= 2
    by_hand = [sum(int(hist[t, j] != hist[t - 1, j]) for t in range(1, len(hist))) for j in range(hist.shape[1])]
    np.testing.assert_array_equal(scores["ff"], by_hand)
    np.testing.assert_array_equal(scores["score"], by_hand)


def test_narrow_width_is_a_saved_setting(tmp_path):
    x, y = separable(n_per=4)
    res = run_cycle(x, y, x[:6], 4, FAST.replace(max_epochs=2, tpt_window=1, width=8), out_dir=tmp_path)
    assert res.model.feature_dim == 64 and res.meta["width"] == 8
    model, meta = load_model(tmp_path / "model.pt")
    np.testing.assert_allclose(predict_proba(model, x[:6]), res.probs, atol=1e-5)


def test_collapse_rule_by_hand():
    from ncalr_backend.engine.training.trainer import collapsed
    assert collapsed([0.2, 0.5, 0.81, 0.19, 0.09, 0.16])  # the run seen live: 0.81, then 0.19 ... 0.16
    assert not collapsed([0.2, 0.5, 0.62, 0.60, 0.58])  # label noise: a low plateau, no collapse
    assert not collapsed([0.3, 0.9, 0.7])  # a dip, not a collapse (0.7 >= 0.5 x 0.9)
    assert not collapsed([0.1, 0.05])  # never learned anything: nothing to collapse from
    assert not collapsed([0.5])
    # the fall must be at least COLLAPSE_MIN_SAMPLES (10) labeled images when the size is known
    assert collapsed([0.2, 0.5, 0.81, 0.19, 0.09, 0.16], n=100)  # 65 images
    assert not collapsed([0.3, 0.6, 0.1], n=10)  # the first 10 labels: five images, not a divergence
    assert collapsed([0.3, 0.6, 0.1], n=20) and not collapsed([0.3, 0.6, 0.1], n=19)  # 10 vs 9.5 images


def test_training_made_to_diverge_raises_and_writes_nothing(tmp_path):
    from ncalr_backend.engine import Diverged
    x, y = separable(n_per=6)
    with pytest.raises(Diverged, match="loss became|collapsed|non-finite logits"):  # whichever shows first
        run_cycle(x, y, x[:5], 4, FAST.replace(lr=1e6, momentum=0.0, max_epochs=6, tpt_window=2), out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_plateau_guard_by_hand():
    from ncalr_backend.engine.training.trainer import plateau_starts
    flat = [0.3, 0.6, 0.7, 0.7, 0.7, 0.7]
    # noisy labels: eval and fit accuracy flat at one level -> the plateau counts
    assert plateau_starts(flat, [0.3, 0.55, 0.68, 0.7, 0.69, 0.7], 3, 0.01, 0.5, 0.1)
    # the SGD pass already fits every label while the eval accuracy trails: transient, no plateau
    assert not plateau_starts(flat, [0.3, 0.9, 1.0, 1.0, 1.0, 1.0], 3, 0.01, 0.5, 0.1)
    # one lagging epoch inside the window is enough to wait; the same epoch before the window is not
    assert not plateau_starts(flat, [0.3, 0.6, 0.7, 0.81, 0.7, 0.7], 3, 0.01, 0.5, 0.1)
    assert plateau_starts(flat, [0.3, 0.6, 0.9, 0.7, 0.7, 0.7], 3, 0.01, 0.5, 0.1)
    # a gap of exactly max_gap still counts; max_gap = 1 turns the guard off
    assert plateau_starts(flat, [0.3, 0.6, 0.7, 0.8, 0.8, 0.8], 3, 0.01, 0.5, 0.1 + 1e-12)
    assert plateau_starts(flat, [1.0] * 6, 3, 0.01, 0.5, 1.0)
    # the guards that were there before: below min_acc, still rising, too short
    assert not plateau_starts([0.3, 0.4, 0.4, 0.4, 0.4], [0.4] * 5, 3, 0.01, 0.5, 0.1)
    assert not plateau_starts([0.5, 0.6, 0.65, 0.7, 0.75], [0.75] * 5, 3, 0.01, 0.5, 0.1)
    assert not plateau_starts([0.7, 0.7, 0.7], [0.7] * 3, 3, 0.01, 0.5, 0.1)
    # a collapse is no plateau: the accuracy rose past min_acc, fell back below it and stayed (found
    # by review: T_i came at 0.35 and the degraded run was reported as the terminal phase)
    assert not plateau_starts([0.3, 0.6, 0.35, 0.35, 0.35, 0.35, 0.35], [0.35] * 7, 3, 0.01, 0.5, 0.1)


def test_default_criterion_waits_out_a_transient_plateau():
    """Two SGD steps per epoch: the network fits the blocks within three epochs (fit accuracy 1.0)
    while the eval-mode accuracy, behind BatchNorm's running statistics, sits at 0.25 and then at
    0.5 for eight epochs. The unguarded plateau fired at 0.5 (a terminal phase on a half-learned
    model); the default must wait for the real thing: the threshold, with the model fully learned."""
    assert EngineConfig().tpt_criterion == "plateau"
    x, y = separable(n_per=8)
    px, py = separable(n_per=5, seed=1)
    # two steps per epoch, the case the guard was made for (min_steps_per_epoch > 2 would pass over the
    # set again and shorten the lag; pinned at 1 so that a later default cannot hide the case)
    two = FAST.replace(min_steps_per_epoch=1)
    res = run_cycle(x, y, px, 4, two)
    accs = [h["train_acc"] for h in res.history]
    fits = [h["fit_acc"] for h in res.history]
    # the case is what it is said to be: a long flat stretch at 0.5 while the SGD pass is at 1.0 ...
    flat = [e for e, (a, f) in enumerate(zip(accs, fits), 1) if a == 0.5 and f == 1.0]
    assert len(flat) >= FAST.tpt_patience, (accs, fits)
    # ... where the guard-less plateau fires, on a model that gets only half the pool right
    unguarded = run_cycle(x, y, px, 4, two.replace(tpt_plateau_max_gap=1.0))
    assert unguarded.tpt["by"] == "plateau" and unguarded.tpt["t_i"] <= flat[-1], unguarded.tpt
    # the default waits: the terminal phase starts at the threshold, with the pool learned
    assert res.tpt["reached"] and res.tpt["by"] == "accuracy", (res.tpt, accs, fits)
    assert accs[res.tpt["t_i"] - 1] >= FAST.train_acc_threshold
    assert (res.pred == py).mean() > 0.9


def test_auto_threads_leave_busy_cores_alone(monkeypatch):
    from ncalr_backend.engine import run as run_mod
    from ncalr_backend.engine.run import auto_threads
    assert auto_threads(2, 0.1) == 2  # idle: every core
    assert auto_threads(2, 0.7) == 1  # one busy neighbour on two cores: one thread
    assert auto_threads(2, 5.0) == 1  # never fewer than one
    assert auto_threads(16, 3.2) == 13 and auto_threads(16, 0.0) == 16 and auto_threads(1, 0.0) == 1
    monkeypatch.setattr(run_mod.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(run_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert auto_threads() == 3
    # a cycle with threads=0 sets torch's threads from the machine; threads=N sets N
    import torch
    before = torch.get_num_threads()
    try:
        x, y = separable(n_per=3)
        run_cycle(x, y, x[:2], 4, FAST.replace(max_epochs=1, tpt_window=1, threads=0))
        assert torch.get_num_threads() == 3
        run_cycle(x, y, x[:2], 4, FAST.replace(max_epochs=1, tpt_window=1, threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_memory_layout_follows_the_model_and_gives_the_same_outputs():
    """forward_all feeds inputs in the model's own layout (EngineConfig.channels_last decides it on
    CUDA); both layouts give the same features and logits (here on the CPU, where torch supports both)."""
    import torch

    from ncalr_backend.engine.training import build_model
    from ncalr_backend.engine.training.trainer import forward_all, is_channels_last

    torch.manual_seed(0)
    for channels in (1, 3):  # one input channel: the first conv weight is both layouts at once
        model = build_model(10, channels, 16, "", 8).eval()
        x = torch.rand(37, channels, 16, 16)
        assert not is_channels_last(model)
        f0, z0 = forward_all(model, x, torch.device("cpu"), 16)
        model = model.to(memory_format=torch.channels_last)
        assert is_channels_last(model)
        f1, z1 = forward_all(model, x, torch.device("cpu"), 16)
        assert f1.shape == f0.shape == (37, model.fc.in_features) and z1.shape == (37, 10)
        assert torch.allclose(f0, f1, atol=1e-5) and torch.allclose(z0, z1, atol=1e-5)


def test_eval_batch_resolves_per_device():
    import torch

    cfg = EngineConfig()
    assert cfg.eval_batch_size == 0
    assert cfg.eval_batch(torch.device("cpu")) == 512 and cfg.eval_batch(torch.device("cuda")) == 2048
    assert EngineConfig(eval_batch_size=100).eval_batch(torch.device("cuda")) == 100
    with pytest.raises(ConfigError, match="eval_batch_size"):
        EngineConfig(eval_batch_size=-1)
    assert EngineConfig.from_mapping({"channels_last": "false"}).channels_last is False


def test_a_terminal_phase_too_near_the_epoch_cap_says_its_window_was_cut():
    """Found by review: T_i at the cap gave tpt.reached with one checkpoint (FF 0 for the whole
    pool) and nothing said so."""
    x, y = separable(n_per=8)
    px, _ = separable(n_per=5, seed=1)
    cut = run_cycle(x, y, px, 4, FAST.replace(min_epochs=3, max_epochs=3, tpt_window=2, train_acc_threshold=0.01))
    assert cut.tpt["reached"] and cut.tpt["t_i"] == 3 and cut.tpt["window_complete"] is False
    whole = run_cycle(x, y, px, 4, FAST.replace(max_epochs=6, tpt_window=2, train_acc_threshold=0.01))
    assert whole.tpt["reached"] and whole.tpt["window_complete"] is True and len(whole.tpt["checkpoints"]) == 3
    # without a pool no checkpoint is recorded, and the window is still complete (found by review)
    empty = run_cycle(x, y, px[:0], 4, FAST.replace(max_epochs=6, tpt_window=2, train_acc_threshold=0.01))
    assert empty.tpt["reached"] and empty.tpt["checkpoints"] == [] and empty.tpt["window_complete"] is True


def test_every_setting_is_in_the_settings_table_of_docs_engine_md():
    """docs/engine.md's settings table is the reference the README points to: every EngineConfig
    field has a row (alone or beside its siblings), and every name in the table is a field."""
    import dataclasses
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "docs" / "engine.md").read_text()
    table = text.split("## Settings (", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    first = {n for line in rows for n in re.findall(r"`([a-z_]+)`", line.split(" | ")[0])}  # the name column
    anywhere = {n for line in rows for n in re.findall(r"`([a-z_]+)`", line)}  # sub-settings in the meaning
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    assert fields - anywhere == set(), f"settings missing from docs/engine.md: {sorted(fields - anywhere)}"
    assert first - fields == set(), f"docs/engine.md names settings that do not exist: {sorted(first - fields)}"


@pytest.fixture(scope="module")
def short_cycle():
    """A cycle short enough to train four times: the shared model, then one per setting below."""
    x, y = separable(n_per=6)
    px, _ = separable(n_per=5, seed=1)
    base = FAST.replace(max_epochs=8, tpt_window=3)
    return base, run_cycle(x, y, px, 4, base), (x, y, px)


@pytest.mark.parametrize("field,value", [("fusion", "rank"), ("margin_weight", 0.34), ("uncertain_share", 0.5)])
def test_scoring_only_settings_rank_the_same_on_the_shared_model(short_cycle, field, value):
    """The benchmark trains once per ``training_key`` and re-ranks the other variants on that model
    (``bench.quality_engine.SCORING_FIELDS``); a setting may be listed there only if re-ranking with
    it gives the order a cycle run with it gives. These three were missing (found 2026-12-03), so
    their variants trained again: correct, but one training each too many."""
    from ncalr_backend.bench.quality_engine import training_key
    from ncalr_backend.engine import rerank

    base, res, (x, y, px) = short_cycle
    cfg = base.replace(**{field: value})
    assert training_key(cfg) == training_key(base)
    direct = run_cycle(x, y, px, 4, cfg)
    ranking, scores, _ = rerank(res, cfg)
    np.testing.assert_array_equal(ranking, direct.ranking)
    np.testing.assert_allclose(scores["score"], direct.scores["score"])
    # the setting changes the scores or the order here: not a vacuous check
    assert not (np.array_equal(ranking, res.ranking) and np.allclose(scores["score"], res.scores["score"]))


def test_two_or_three_labels_train_without_blowing_up_batchnorm():
    """Found by review: with two labeled 8 px images BatchNorm normalised each channel by the variance
    of two values, zero where ReLU zeroed both at 1x1, and its running variance made the eval-mode
    logits explode (width 8 seed 0, width 4 seed 2: "diverged"). Below BN_BATCH_MIN images BatchNorm
    trains on its running statistics, which stay as they were."""
    from ncalr_backend.data.digits import load_digits_images

    x, y = load_digits_images()
    for width, seed in ((8, 0), (4, 2)):
        idx = np.concatenate([np.flatnonzero(y == c)[:1] for c in (0, 1)])
        res = run_cycle(x[idx], y[idx], x[100:110], 2, EngineConfig(width=width, max_epochs=3, tpt_window=1, threads=1,
                                                                   seed=seed))
        assert np.isfinite(res.probs).all()
        bns = [m for m in res.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)  # never learned from 2
