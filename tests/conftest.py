"""Suite-wide: in-process training uses one torch thread. The suite runs on 2-core machines next to
a Label Studio server and gunicorn; oversubscribed torch threads made a tiny cycle 36x slower
there (0.66 s vs 23.9 s). Tests check correctness, not speed, so this changes no assertion."""
import torch

torch.set_num_threads(1)
