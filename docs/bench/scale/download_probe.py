"""The image stage on the backend's side, old loader vs new, side by side in one run (issue 13).

Label Studio's own dev server (``label-studio start``) serves about 90 images/s whatever the
client does (``baseline/serving_probe.json``: one process, 10-13 ms of its CPU per image), so
the first cycle's download rate against it is Label Studio's, not ours. This probe measures what
the backend can take in when the images come from a server that is not the bottleneck (Python's
threaded ``http.server`` with HTTP/1.1 keep-alive, in its own process, standing in for an object
store or nginx listed in ALLOWED_IMAGE_HOSTS): N generated 32x32 digit PNGs, decoded to RGB
float32, with

* old: the loader of commit 6287b00 (8 workers, requests' default pool of 10 connections, a list
  of per-image arrays, ``np.stack``, then ``.astype(np.float32)`` and a fancy-indexed split into
  labeled/pool: about 3 copies of the image tensor);
* new: ``snapshot.load_image_groups`` (DOWNLOAD_WORKERS=16, one kept-alive connection per worker,
  each image decoded straight into its row of the preallocated labeled and pool arrays);

each once with an empty cache (download + decode) and once from the cache (decode only), and the
peak of numpy/Python allocations during the call (tracemalloc). Output: download_probe.json.

    flock /tmp/ncalr-heavy.lock .venv/bin/python docs/bench/scale/download_probe.py [N] [python|nginx]

``nginx`` (Debian's nginx, one worker process, keep-alive) stands in for a production image host
far better than Python's server, which itself takes a core of this 2-core machine; the output
then goes to download_probe_nginx.json.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from ncalr_backend.bench.common import git_state, machine  # noqa: E402
from ncalr_backend.bench.scale import scale_pngs  # noqa: E402
from ncalr_backend.data.images import BrokenImage, ImageCache, decode_image  # noqa: E402
from ncalr_backend.service.demo import free_port, wait_http  # noqa: E402
from ncalr_backend.service.labelconfig import parse_label_config  # noqa: E402
from ncalr_backend.service.labelstudio import LabelStudioClient  # noqa: E402
from ncalr_backend.service.snapshot import load_image_groups  # noqa: E402

CFG = parse_label_config('<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
                         '<Choice value="a"/><Choice value="b"/></Choices></View>')
SIZE, CH, LABELED = 32, 3, 50


def old_loader(client, cache, tasks, workers=8):
    """The loader of 6287b00, verbatim in what it does with memory (list, stack, cast, split)."""
    def one(task):
        url = task["data"]["image"]
        data = cache.get(url, client.download)
        try:
            return decode_image(data, SIZE, CH), None
        except BrokenImage as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=workers) as ex:
        results = list(ex.map(one, tasks))
    arrays = [a for a, _ in results if a is not None]
    x_all = np.stack(arrays).astype(np.float32)
    return x_all[list(range(LABELED))], x_all[list(range(LABELED, len(arrays)))]


def new_loader(client, cache, tasks, workers=16):
    (xl, _, _), (xp, _, _) = load_image_groups(client, cache, [tasks[:LABELED], tasks[LABELED:]], CFG, SIZE, CH,
                                               workers)
    return xl, xp


def measure(fn, client, cache, tasks):
    tracemalloc.start()
    t = time.perf_counter()
    xl, xp = fn(client, cache, tasks)
    s = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(xl) + len(xp) == len(tasks)
    return {"seconds": s, "images_per_s": len(tasks) / s, "peak_alloc_mb": peak / 2 ** 20,
            "tensor_mb": (xl.nbytes + xp.nbytes) / 2 ** 20}


NGINX_CONF = """user root;
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def start_server(kind: str, port: int, root: Path, work: Path) -> subprocess.Popen:
    if kind == "nginx":
        (work / "nginx").mkdir(exist_ok=True)
        conf = work / "nginx" / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=work / "nginx", port=port, root=root))
        return subprocess.Popen(["/usr/sbin/nginx", "-c", str(conf), "-p", str(work / "nginx")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--protocol", "HTTP/1.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(n: int = 5000, kind: str = "python") -> int:
    work = Path(tempfile.mkdtemp(prefix="ncalr-download-probe-"))
    (work / "img").mkdir()
    for name, data, _ in scale_pngs(n):
        (work / "img" / name).write_bytes(data)
    port = free_port()
    server = start_server(kind, port, work / "img", work)
    out = {"images": n, "image_size": SIZE, "channels": CH,
           "server": "nginx 1 worker, keep-alive" if kind == "nginx" else "python -m http.server --protocol HTTP/1.1",
           "git": git_state(), "machine": machine()}
    try:
        base = f"http://127.0.0.1:{port}"
        tasks = [{"id": i, "data": {"image": f"{base}/{p.name}"}} for i, p in enumerate(sorted((work / "img").iterdir()))]
        wait_http(tasks[0]["data"]["image"], 30, proc=server, what="image server")
        for name, fn, client in (
                ("old", old_loader, LabelStudioClient("http://ls.invalid:9", "k", allowed_hosts=[f"127.0.0.1:{port}"],
                                                      session=requests.Session())),
                ("new", new_loader, LabelStudioClient("http://ls.invalid:9", "k", allowed_hosts=[f"127.0.0.1:{port}"],
                                                      pool_size=16))):
            cache = ImageCache(work / f"cache-{name}")
            out[name] = {"download": measure(fn, client, cache, tasks), "cached": measure(fn, client, cache, tasks)}
            print(name, json.dumps(out[name]), flush=True)
        for k in ("download", "cached"):
            out[f"ratio_{k}_rate_new_over_old"] = out["new"][k]["images_per_s"] / out["old"][k]["images_per_s"]
            out[f"ratio_{k}_peak_alloc_new_over_old"] = out["new"][k]["peak_alloc_mb"] / out["old"][k]["peak_alloc_mb"]
    finally:
        server.terminate()
        server.wait(10)
    path = Path(__file__).with_name("download_probe.json" if kind == "python" else f"download_probe_{kind}.json")
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k.startswith("ratio")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000, sys.argv[2] if len(sys.argv) > 2 else "python"))
