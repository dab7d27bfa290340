"""Integration harness: ONE real Label Studio 1.23.2 per session (headless, localhost, its own
virtual environment) and the real backend under gunicorn, on ports chosen free at run time.

Engine settings are kept small through the environment (8x8 images, a few epochs) so a cycle takes
seconds on two CPU cores; the mechanics under test do not depend on the model's accuracy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ncalr_backend.service.demo import (BackendProcess, LocalLabelStudio, LSAdmin, backend_env, digit_pngs,
                                free_port)

N_DIGITS = int(os.environ.get("NCALR_IT_DIGITS", "300"))
TRIGGER_MIN = 20
BASIC = ("ncalr", "it-secret-pass")

BACKEND_SETTINGS = dict(
    BASIC_AUTH_USER=BASIC[0], BASIC_AUTH_PASS=BASIC[1],
    TRAIN_TRIGGER_MIN=TRIGGER_MIN, TRAIN_TRIGGER_FRACTION=0.02,
    IMAGE_SIZE=8, IMAGE_CHANNELS=1, PREDICTION_CHUNK_SIZE=100,
    NCALR_MAX_EPOCHS=8, NCALR_TPT_WINDOW=3, NCALR_TRAIN_ACC_THRESHOLD=0.9, NCALR_BATCH_SIZE=32,
    NCALR_NC_SUBSAMPLE=200, LOG_LEVEL="INFO",
)


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def need_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (requirements-dev.txt)")
    if missing:
        msg = f"the browser test needs {missing}: scripts/install.sh installs them (NCALR_NEED_BROWSER=1)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Selenium through Debian's chromedriver (nothing is
    downloaded), a fresh profile per module."""
    need_browser()
    import shutil
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="ncalr-chromium-")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    d = tmp_path_factory.mktemp("label-studio")
    (d / "files").mkdir()  # Local Files storages live under it (test_localfiles.py)
    ls = LocalLabelStudio(d / "data", extra_env={"LOCAL_FILES_SERVING_ENABLED": "true",
                                                 "LOCAL_FILES_DOCUMENT_ROOT": str(d / "files")})
    try:
        ls.start(timeout=300)
    except Exception:
        print(_tail(ls.log_path))
        ls.stop()
        raise
    yield ls
    ls.stop()


@pytest.fixture(scope="session")
def admin(label_studio) -> LSAdmin:
    return LSAdmin(label_studio.url, label_studio.token)


class Backend:
    """The backend process, restartable on the same port and MODEL_DIR (restart/crash tests)."""

    def __init__(self, label_studio, model_dir: Path, log_path: Path, **overrides):
        self.env = backend_env(label_studio.url, label_studio.token, model_dir, **{**BACKEND_SETTINGS, **overrides})
        self.model_dir = model_dir
        self.log_path = log_path
        self.port = free_port()
        self.proc = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.env.setdefault("PUBLIC_URL", self.url)  # the URL the tests connect in Label Studio
        self.http = requests.Session()
        self.http.auth = BASIC
        # gunicorn closes idle keep-alive connections after 2 s; a GET that reuses one just as it
        # closes gets "Remote end closed connection" (seen once in CI after a 2 s sleep). Retry
        # GETs only: webhooks and other POSTs must never be sent twice.
        retry = Retry(total=3, connect=3, read=3, status=0, backoff_factor=0.2,
                      allowed_methods=frozenset({"GET"}), raise_on_status=False)
        self.http.mount("http://", HTTPAdapter(max_retries=retry))

    def start(self):
        self.proc = BackendProcess(self.env, port=self.port, log_path=self.log_path).start(timeout=90)
        return self

    @property
    def secret(self) -> str:
        """The webhook secret the backend generated in its MODEL_DIR on first start."""
        return (self.model_dir / "webhook_key_secret").read_text().strip()

    def key(self, pid: int) -> str:
        """What project ``pid``'s webhook carries: the project's own key, derived from the secret."""
        from ncalr_backend.service.auth import project_key

        return project_key(self.secret, pid)

    def stop(self, kill=False):
        if self.proc:
            self.proc.stop(kill=kill)

    def status(self, pid: int) -> dict:
        r = self.http.get(f"{self.url}/status", params={"project": pid}, timeout=10)
        r.raise_for_status()
        return r.json()

    def wait(self, pid: int, predicate, timeout: float = 300, what="condition") -> dict:
        deadline = time.time() + timeout
        s = None
        while time.time() < deadline:
            s = self.status(pid)
            if predicate(s):
                return s
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; last status {s}\n--- backend log ---\n"
                             f"{_tail(self.log_path)}")

    def wait_cycle(self, pid: int, cycle: int, timeout: float = 300) -> dict:
        """Wait until cycle number ``cycle`` (or a later one) completed, and nothing runs or waits."""
        def done(s):
            if s.get("last_failed") and s["last_failed"] >= cycle and s.get("last_error"):
                raise AssertionError(f"cycle {s['last_failed']} failed: {s['last_error']}\n{_tail(self.log_path)}")
            return ((s.get("last_completed") or 0) >= cycle and not s["scheduler"]["running"]
                    and not s["scheduler"]["waiting"] and not s.get("in_progress"))
        return self.wait(pid, done, timeout, what=f"cycle {cycle}")


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    d = tmp_path_factory.mktemp("backend")
    b = Backend(label_studio, d / "model_dir", d / "backend.log").start()
    yield b
    b.stop()
    if os.environ.get("NCALR_IT_SHOW_LOG"):
        print(_tail(b.log_path, 200))


@pytest.fixture(scope="module")
def digits_project(admin, backend):
    """A project of digit images uploaded as files, plus one broken image and one image on a foreign
    host, connected to the backend (with basic auth) through Label Studio's API."""
    pid = admin.create_project("digits (integration)")
    files = digit_pngs(N_DIGITS, seed=1)
    n = admin.upload_files(pid, [(name, data) for name, data, _ in files])
    assert n == N_DIGITS
    assert admin.upload_files(pid, [("broken_9999_1.png", b"\x89PNG\r\n\x1a\n this is not an image")]) == 1
    assert admin.import_tasks(pid, [{"image": "http://198.51.100.7/elsewhere_0000_5.png"}]) == 1
    ml = admin.connect_ml(pid, backend.url, basic_auth=BASIC)
    assert ml["state"] == "CO", ml
    tasks = admin.tasks(pid)
    assert len(tasks) == N_DIGITS + 2
    broken = [t["id"] for t in tasks if "broken_" in t["data"]["image"]]
    foreign = [t["id"] for t in tasks if "elsewhere_" in t["data"]["image"]]
    digits = [t for t in tasks if "digit_" in t["data"]["image"]]
    wait_for_webhook_auth(admin, pid)
    return {"id": pid, "ml": ml["id"], "digits": digits, "broken": broken, "foreign": foreign}


SECRET_HEADER = "X-NCALR-Webhook-Secret"


def wait_for_webhook_auth(admin, pid: int, timeout: float = 30.0, basic: bool = True, secret: str = None) -> list:
    """Annotations count only once the backend has added its headers (the webhook secret, and
    basic auth when it is on) to the webhook Label Studio created for it; wait for that."""
    deadline = time.time() + timeout
    hooks = None
    while time.time() < deadline:
        hooks = admin.req("GET", "/api/webhooks/", params={"project": pid}).json()
        if hooks and all(
                (h.get("headers") or {}).get(SECRET_HEADER) and (secret is None or h["headers"][SECRET_HEADER] == secret)
                and (not basic or (h.get("headers") or {}).get("Authorization", "").startswith("Basic "))
                for h in hooks):
            return hooks
        time.sleep(0.5)
    raise AssertionError(f"webhook headers not set: {hooks}")
