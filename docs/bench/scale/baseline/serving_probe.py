"""How fast Label Studio 1.23.2 (label-studio start, SQLite) serves images: 1000 digit PNGs as uploaded files vs
the Local Files storage path the scale benchmark uses, 1 and 8 parallel downloads, with Label Studio's CPU per
image. Output: serving_probe.json (run on the same machine as the baseline, right after it).

    flock /tmp/ncalr-heavy.lock /work/main/.venv/bin/python docs/bench/scale/baseline/serving_probe.py
"""
import os, sys, time, tempfile, json
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
import requests
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))  # the repository root
from ncalr_backend.service.demo import LocalLabelStudio, LSAdmin
from ncalr_backend.bench.scale import scale_pngs, local_files_tasks, children

N = 1000
work = Path(tempfile.mkdtemp(prefix="scaleprobe-"))
files = work / "files"; (files / "scale").mkdir(parents=True)
pngs = list(scale_pngs(N))
for n, d, _ in pngs: (files / "scale" / n).write_bytes(d)
ls = LocalLabelStudio(work / "ls", extra_env={"LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(files)})
ls.start(300)
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def ls_pids():
    pids = [ls.proc.pid]; i = 0
    while i < len(pids): pids += children(pids[i]); i += 1
    return pids
try:
    a = LSAdmin(ls.url, ls.token)
    p1 = a.create_project("upload"); t = time.time(); a.upload_files(p1, [(n, d) for n, d, _ in pngs]); up_s = time.time() - t
    p2 = a.create_project("local")
    a.req("POST", "/api/storages/localfiles/", json={"project": p2, "path": str(files / "scale"), "use_blob_urls": True})
    t = time.time(); a.import_tasks(p2, local_files_tasks([n for n, _, _ in pngs], "scale")); loc_s = time.time() - t
    out = {"upload_import_s": up_s, "localfiles_import_s": loc_s}
    for name, pid in (("upload", p1), ("local", p2)):
        urls = [t["data"]["image"] for t in a.tasks(pid)]
        s = requests.Session(); s.headers["Authorization"] = f"Token {ls.token}"
        ad = requests.adapters.HTTPAdapter(pool_maxsize=16); s.mount("http://", ad)
        for workers in (1, 8):
            c0 = sum(cpu(x) for x in ls_pids()); t = time.time()
            with ThreadPoolExecutor(workers) as ex:
                sizes = list(ex.map(lambda u: len(s.get(ls.url + u if u.startswith("/") else u, timeout=60).content), urls))
            dt = time.time() - t; c1 = sum(cpu(x) for x in ls_pids())
            out[f"{name}_w{workers}"] = {"per_s": len(urls) / dt, "ls_cpu_per_image_ms": 1000 * (c1 - c0) / len(urls), "ok": sum(x > 50 for x in sizes)}
    print(json.dumps(out, indent=1))
finally:
    ls.stop()
    import shutil; shutil.rmtree(work, ignore_errors=True)
