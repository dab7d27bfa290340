"""What the URL-policy check costs a cycle's copy of the mirror's decoded images (snapshot.load_image_groups).

Every kept image is checked against ``LabelStudioClient.resolve_image_url`` when the policy (Label
Studio's origin, ALLOWED_IMAGE_HOSTS) changed since the images were checked, and copied without a
check otherwise. This times, in one process and alternating, a copy of N kept 32x32 images with a
check of every URL ("every cycle": a client whose policy never repeats) against the product's
("once per policy"), three times each, and writes the medians and their ratio.

    PYTHONPATH=. .venv/bin/python docs/bench/scale/mirror_policy.py [N]   (50000 by default; writes mirror_policy.json)
"""
import io
import json
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

import numpy as np
from PIL import Image

from ncalr_backend.bench.common import git_state
from ncalr_backend.data.images import ImageCache
from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.labelstudio import LabelStudioClient
from ncalr_backend.service.mirror import TaskMirror
from ncalr_backend.service.snapshot import load_image_groups

CFG = parse_label_config('<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
                         '<Choice value="a"/><Choice value="b"/></Choices></View>')
buf = io.BytesIO()
Image.new("L", (32, 32), 90).save(buf, format="PNG")
PNG = buf.getvalue()


class Client(LabelStudioClient):
    def download(self, url):  # the real URL policy, no network
        self.resolve_image_url(url)
        return PNG


class EveryCycle(Client):
    n = count()

    def url_policy(self):
        return f"{super().url_policy()} #{next(self.n)}"


def main(n: int) -> int:
    state = git_state()
    tmp = Path(tempfile.mkdtemp())
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i:06d}.png"}} for i in range(1, n + 1)]
    variants = {"check every cycle": EveryCycle, "check once per policy": Client}
    mirrors = {name: TaskMirror(tmp / f"m{i}") for i, name in enumerate(variants)}  # one each: the policy is the mirror's
    cache = ImageCache(tmp / "c")
    for m in mirrors.values():  # keeps the images (and checks them once under Client's policy)
        load_image_groups(Client("http://ls.test:8080", "k"), cache, [tasks], CFG, 32, 3, 2, decoded=m)
    times = {name: [] for name in variants}
    for _ in range(3):
        for name, cls in variants.items():
            t = time.perf_counter()
            (_, ok, _), = load_image_groups(cls("http://ls.test:8080", "k"), cache, [tasks], CFG, 32, 3, 2,
                                            decoded=mirrors[name])
            times[name].append(time.perf_counter() - t)
            assert len(ok) == n
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {"git": state, "n": n, "seconds": times, "median_s": med,
           "ratio_every_over_once": med["check every cycle"] / med["check once per policy"]}
    print(json.dumps(out, indent=1))
    (Path(__file__).resolve().parent / "mirror_policy.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50000))
