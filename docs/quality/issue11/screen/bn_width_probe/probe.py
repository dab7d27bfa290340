import numpy as np, torch, copy
from ncalr_backend.bench import quality as q
from ncalr_backend.engine import run_cycle, predict_proba
from ncalr_backend.engine.config import EngineConfig
def recal(model, x, bs=256):
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats(); mod.momentum = None
    m.train()
    with torch.no_grad():
        for s in range(0, len(x), bs): m(torch.from_numpy(x[s:s+bs]))
    m.eval(); return m
for setting in (["--noise-type", "none"], ["--noise-type", "symmetric", "--noise-rate", "0.2"]):
  for seed in (10, 11):
    args = q.parse_args(["--width", "8", "--threads", "1"] + setting)
    data = q.load_data(args); pool = q.make_pool(args, data, seed); M = len(pool.x_pool)
    rng = np.random.default_rng(seed)
    for n in (16, 40, 125):
        lab = rng.choice(M, size=n, replace=False); ans = pool.oracle.query(lab)
        for width in (8, 64):
            cfg = EngineConfig(width=width, threads=1, max_epochs=40, batch_size=32 if n > 40 else 8, seed=seed, tpt_window=10)
            res = run_cycle(pool.x_pool[lab], ans, pool.x_pool[:2], pool.num_classes, cfg)
            a0 = (predict_proba(res.model, pool.x_test, device="cpu").argmax(1) == pool.y_test).mean()
            m2 = recal(res.model, pool.x_pool[lab])
            with torch.no_grad(): a1 = (m2(torch.from_numpy(pool.x_test)).argmax(1).numpy() == pool.y_test).mean()
            print(setting[1], seed, n, "w", width, "test acc", round(float(a0), 3), "-> recal", round(float(a1), 3), flush=True)
