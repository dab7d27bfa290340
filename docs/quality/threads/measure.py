"""Issue 11, item 5: one small cycle timed under a thread setting. Prints one JSON line.
usage: python docs/quality/threads/measure.py THREADS LABEL   (THREADS 0 = the engine's auto choice)"""
import json
import os
import sys
import time

import numpy as np
import torch

from ncalr_backend.data.datasets import load_images
from ncalr_backend.engine import EngineConfig, run_cycle
from ncalr_backend.engine.run import auto_threads

threads, label = int(sys.argv[1]), sys.argv[2]
torch_default = torch.get_num_threads()
data = load_images("digits", 32, 1)
rng = np.random.default_rng(0)
idx = rng.permutation(len(data.y))
lab, pool = idx[:120], idx[120:520]
cfg = EngineConfig(width=8, max_epochs=4, tpt_window=2, batch_size=32, device="cpu", threads=threads)
load = os.getloadavg()[0]
chosen = threads if threads > 0 else auto_threads()
t = time.perf_counter()
run_cycle(data.x[lab], data.y[lab], data.x[pool], data.num_classes, cfg)
print(json.dumps({"label": label, "threads_setting": threads, "torch_threads": torch.get_num_threads(),
                  "auto_choice": chosen, "torch_default": torch_default, "load1": round(load, 2),
                  "seconds": round(time.perf_counter() - t, 2)}), flush=True)
