"""The README's dashboard screenshot (docs/img/dashboard.png): the demo project after a few cycles.

Starts what ``scripts/run.sh`` starts (a local Label Studio 1.23.2, the backend under gunicorn with
the demo's settings, the 500-digit demo project), labels through Label Studio's own queue as an
annotator would (20 per cycle, the trigger threshold), waits for each cycle, then opens ``/`` in
headless Chromium (Debian's, through /usr/bin/chromedriver) and saves the page.

    .venv/bin/python scripts/dashboard_screenshot.py [--cycles 4] [--out docs/img/dashboard.png]
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ncalr_backend.service.demo import (BackendProcess, LocalLabelStudio, LSAdmin, backend_env,  # noqa: E402
                                        digit_pngs, label_from_name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--per-cycle", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "dashboard.png"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ncalr-dashboard-shot-"))
    ls = LocalLabelStudio(work / "label-studio").start()
    auth = ("admin", "dashboard-shot")
    env = backend_env(ls.url, ls.token, work / "model_dir", BASIC_AUTH_USER=auth[0], BASIC_AUTH_PASS=auth[1],
                      NCALR_MAX_EPOCHS=30, NCALR_TPT_WINDOW=5, NCALR_THREADS=1,
                      TRAIN_TRIGGER_MIN=args.per_cycle, LOG_LEVEL="INFO")
    backend = BackendProcess(env, log_path=work / "backend.log").start()
    try:
        import requests
        admin = LSAdmin(ls.url, ls.token)
        pid = admin.create_project("Digits (NCAL-R demo)")
        admin.upload_files(pid, [(n, d) for n, d, _ in digit_pngs(args.images)])
        admin.connect_ml(pid, backend.url, basic_auth=auth)
        deadline = time.time() + 60  # the backend adds its basic-auth header to LS's webhook
        while time.time() < deadline:
            hooks = admin.req("GET", "/api/webhooks/", params={"project": pid}).json()
            if hooks and all((h.get("headers") or {}).get("Authorization") for h in hooks):
                break
            time.sleep(0.5)
        tasks = admin.tasks(pid)

        def status():
            return requests.get(f"{backend.url}/status", params={"project": pid}, auth=auth, timeout=10).json()

        for c in range(1, args.cycles + 1):
            for k in range(args.per_cycle):
                t = tasks[k] if c == 1 else admin.next_task(pid)  # cycle 1: the first tasks; then the queue
                admin.annotate(t["id"], label_from_name(t["data"]["image"]))
            while True:
                s = status()
                if (s.get("last_completed") or 0) >= c and not s["scheduler"]["running"]:
                    break
                if (s.get("last_failed") or 0) >= c:
                    raise RuntimeError(s.get("last_error"))
                time.sleep(1)
            print(f"cycle {c} done", flush=True)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        profile = tempfile.mkdtemp(prefix="ncalr-chromium-")
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--user-data-dir={profile}", "--window-size=1400,1000", "--hide-scrollbars"):
            opts.add_argument(a)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
        try:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
            driver.get(backend.url + "/")
            time.sleep(2)
            driver.set_window_size(1400, driver.execute_script("return document.body.scrollHeight") + 20)
            time.sleep(1)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
            print(f"saved {args.out}")
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        backend.stop()
        ls.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
