"""A local Label Studio + this backend + a demo project of digit images, for trying it out.

Used by ``scripts/run.sh`` (the "start it" command), by the integration tests and by the write-back
benchmark, so all three exercise the same path: a real Label Studio 1.23.2 started headless on
localhost (its own virtual environment), this backend under gunicorn, images imported as uploaded
files, the backend connected through ``POST /api/ml``.

    python -m ncalr_backend.service.demo            # start both, create the demo project, print URL + login

A second run with the same work folder (``runs/demo``, ``DEMO_DIR``) resumes the first: the login
and token are kept in ``demo-login.json`` (mode 0600; Label Studio keeps the first run's user and
ignores new credentials), the demo project and its labels are reused, and the backend connection is
pointed at this run's backend.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LS_VENV = Path.home() / ".cache" / "ncalr-backend" / "label-studio-1.23.2"

DIGITS_CONFIG = (
    '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
    # required: without it Submit takes an empty choice (clicking the pre-selected one unticks it), the
    # task counts as done in Label Studio and the cycle can only leave it out (found in a walkthrough, 2026-12-05)
    '  <Choices name="digit" toName="image" choice="single" showInLine="true" required="true">\n'
    + "".join(f'    <Choice value="{d}"/>\n' for d in range(10))
    + "  </Choices>\n</View>"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, auth=None, proc: Optional[subprocess.Popen] = None, what="service") -> None:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            r = requests.get(url, timeout=2, auth=auth)
            if r.status_code == 200:
                return
            last = r.status_code
        except requests.RequestException as exc:
            last = exc.__class__.__name__
        time.sleep(0.5)
    raise TimeoutError(f"{what} at {url} not ready after {timeout:.0f}s (last: {last})")


LS_DB = "label_studio.sqlite3"  # Label Studio's SQLite database in its data folder (DJANGO_DB=sqlite)
# A folder for a migrated, empty database to copy into every fresh Label Studio data folder (set by
# the test suite): on a 2-core machine a fresh data folder spends ~55 s of its ~60 s start applying
# migrations; from the copy it starts in ~5 s. Unset (the demo, the benchmarks' default): as before.
DB_TEMPLATE_ENV = "LS_DB_TEMPLATE_DIR"  # not NCALR_*: the engine refuses unknown NCALR_ variables


def migrated_db(venv: Path, folder: Path, timeout: float = 600) -> Path:
    """A Label Studio database with every migration applied and nothing else (no user, no
    organization, no secret: those are made by each ``start``), built once per ``folder`` and Label
    Studio venv by that Label Studio itself (``label-studio version`` migrates, then prints the
    version). Safe against concurrent callers (a file lock; the file appears whole)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(venv).name}.{LS_DB}"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        build = Path(tempfile.mkdtemp(prefix="build-", dir=folder))
        try:
            ls = LocalLabelStudio(build, venv=venv)
            r = subprocess.run([str(ls.exe), "version"], env=ls.env(), timeout=timeout,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if r.returncode != 0 or not (build / LS_DB).exists():
                raise RuntimeError(f"migrating a template database failed ({r.returncode}): "
                                   f"{r.stdout.decode(errors='replace')[-2000:]}")
            os.replace(build / LS_DB, target)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return target


class LocalLabelStudio:
    """Label Studio 1.23.2 started headless on localhost, with a legacy API token."""

    def __init__(self, data_dir: Path, port: Optional[int] = None, venv: Optional[Path] = None,
                 username: str = "admin@example.com", password: Optional[str] = None,
                 token: Optional[str] = None, log_path: Optional[Path] = None,
                 extra_env: Optional[Dict[str, str]] = None):
        self.venv = Path(venv or os.environ.get("NCALR_LS_VENV") or DEFAULT_LS_VENV)
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.token = token or secrets.token_hex(20)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or self.data_dir / "label-studio.log")
        self.extra_env = {k: str(v) for k, v in (extra_env or {}).items()}  # e.g. local-files serving
        self.proc: Optional[subprocess.Popen] = None

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        for k in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MODEL_DIR", "REDIS_URL"):
            env.pop(k, None)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir), LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password, LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false", LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false",
            SENTRY_DSN="", FRONTEND_SENTRY_DSN="", DJANGO_DB="sqlite", LOG_LEVEL="WARNING",
        )
        env.update(self.extra_env)
        return env

    @property
    def exe(self) -> Path:
        return self.venv / "bin" / "label-studio"

    def start(self, timeout: float = 240) -> "LocalLabelStudio":
        exe = self.exe
        if not exe.exists():
            raise RuntimeError(f"Label Studio is not installed at {self.venv} (scripts/test.sh installs it)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        template = os.environ.get(DB_TEMPLATE_ENV)
        if template and not (self.data_dir / LS_DB).exists():
            shutil.copyfile(migrated_db(self.venv, Path(template)), self.data_dir / LS_DB)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--port", str(self.port), "--internal-host", "127.0.0.1"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/health", timeout, proc=self.proc, what="Label Studio")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class BackendProcess:
    """This backend under gunicorn (one worker process, threads), like production."""

    def __init__(self, env: Dict[str, str], port: Optional[int] = None, log_path: Optional[Path] = None,
                 threads: int = 8):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = Path(log_path) if log_path else None
        self.threads = threads
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 60) -> "BackendProcess":
        env = {**os.environ, **self.env}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", str(self.threads),
               "--timeout", "120", "--bind", f"127.0.0.1:{self.port}", "--chdir", str(ROOT), "_wsgi:app"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        auth = (env["BASIC_AUTH_USER"], env["BASIC_AUTH_PASS"]) if env.get("BASIC_AUTH_USER") else None
        wait_http(f"{self.url}/health", timeout, auth=auth, proc=self.proc, what="the backend")
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# ---------------------------------------------------------------------------- LS API helpers
class LSAdmin:
    """What an admin or an annotator does through Label Studio's API (tests and the demo)."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Token {token}"

    def req(self, method, path, ok=(200, 201, 204), **kw):
        r = self.s.request(method, f"{self.url}{path}", timeout=kw.pop("timeout", 120), **kw)
        if ok and r.status_code not in ok:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r

    def create_project(self, title: str, label_config: str = DIGITS_CONFIG) -> int:
        return self.req("POST", "/api/projects/", json={"title": title, "label_config": label_config}).json()["id"]

    def upload_files(self, project_id: int, files: Sequence[Tuple[str, bytes]], per_request: int = 100) -> int:
        """Import files as uploads: each file its own form field, at most 100 per request."""
        n = 0
        for start in range(0, len(files), per_request):
            chunk = files[start:start + per_request]
            form = {f"file{start + i}": (name, data, "image/png") for i, (name, data) in enumerate(chunk)}
            body = self.req("POST", f"/api/projects/{project_id}/import", files=form).json()
            n += int(body.get("task_count", 0))
        return n

    def import_tasks(self, project_id: int, tasks: List[dict]) -> int:
        return int(self.req("POST", f"/api/projects/{project_id}/import", json=tasks).json().get("task_count", 0))

    def tasks(self, project_id: int) -> List[dict]:
        out, page = [], 1
        while True:
            r = self.req("GET", "/api/tasks/", ok=(200, 404), params={
                "project": project_id, "page": page, "page_size": 100, "fields": "all"})
            if r.status_code == 404:
                return out
            body = r.json()
            out += body["tasks"]
            if not body["tasks"] or len(out) >= body.get("total", 0):
                return out
            page += 1

    def ml_backends(self, project_id: int) -> List[dict]:
        return self.req("GET", "/api/ml/", params={"project": project_id}).json()

    def connect_ml(self, project_id: int, url: str, title: str = "NCAL-R",
                   basic_auth: Optional[Tuple[str, str]] = None) -> dict:
        body = {"url": url, "project": project_id, "title": title, "is_interactive": False}
        if basic_auth:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        return self.req("POST", "/api/ml/", json=body).json()

    def annotate(self, task_id: int, label, from_name="digit", to_name="image", cancelled=False,
                 completed_by: Optional[int] = None) -> dict:
        """Annotate a task with one choice, or (a list) several choices of a multiple-choice config;
        ``completed_by``: as another user of the organisation (``create_user``), which Label Studio
        1.23's annotation API accepts from an administrator."""
        choices = [str(x) for x in label] if isinstance(label, (list, tuple)) else [str(label)]
        result = [] if cancelled else [{"from_name": from_name, "to_name": to_name, "type": "choices",
                                        "value": {"choices": choices}}]
        body = {"result": result, "was_cancelled": cancelled}
        if completed_by is not None:
            body["completed_by"] = int(completed_by)
        return self.req("POST", f"/api/tasks/{task_id}/annotations/", json=body).json()

    def create_user(self, email: str) -> int:
        """A user of the administrator's organisation (a second annotator); returns its id."""
        return int(self.req("POST", "/api/users/", json={"email": email, "username": email}).json()["id"])

    def delete_annotation(self, annotation_id: int) -> None:
        self.req("DELETE", f"/api/annotations/{annotation_id}/")

    def project(self, project_id: int) -> dict:
        return self.req("GET", f"/api/projects/{project_id}/").json()

    def next_task(self, project_id: int) -> Optional[dict]:
        r = self.req("GET", f"/api/projects/{project_id}/next/", ok=(200, 404))
        return r.json() if r.status_code == 200 else None

    def start_training(self, ml_id: int) -> None:
        self.req("POST", f"/api/ml/{ml_id}/train", json={})


def digit_pngs(n: int, seed: int = 0, scale: int = 4) -> List[Tuple[str, bytes, int]]:
    """``n`` digits from scikit-learn as PNG files: (name, bytes, label)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.target))[:n]
    out = []
    for i in idx:
        img = Image.fromarray((d.images[i] * (255.0 / 16.0)).astype(np.uint8), mode="L")
        if scale > 1:
            img = img.resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append((f"digit_{int(i):04d}_{int(d.target[i])}.png", buf.getvalue(), int(d.target[i])))
    return out


def digit_set_pngs(n: int, classes: Sequence[int] = (0, 1, 4, 7), pair_fraction: float = 0.4, seed: int = 0,
                   scale: int = 4) -> List[Tuple[str, bytes, Tuple[int, ...]]]:
    """``n`` multi-label images: a single digit of ``classes`` (label set {d}) or, for about
    ``pair_fraction`` of them, two digits of different classes overlaid with an element-wise max
    (label set {d1, d2}; the construction of the multi-label neural-collapse benchmarks).
    Returns (name, PNG bytes, sorted label tuple); the name ends in ``_<d1>-<d2>.png``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(d.target == c) for c in classes}
    out = []
    for k in range(n):
        if rng.random() < pair_fraction:
            labels = tuple(sorted(int(c) for c in rng.choice(list(classes), 2, replace=False)))
        else:
            labels = (int(rng.choice(list(classes))),)
        img = np.max([d.images[rng.choice(by_class[c])] for c in labels], axis=0)
        im = Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8), mode="L")
        if scale > 1:
            im = im.resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append((f"digits_{k:04d}_{'-'.join(map(str, labels))}.png", buf.getvalue(), labels))
    return out


def label_set_from_name(name_or_url: str) -> List[str]:
    """The true label set from a ``digit_set_pngs`` name (``..._<d1>-<d2>.png``), as choice values."""
    stem = Path(str(name_or_url)).name.rsplit(".", 1)[0]
    return stem.rsplit("_", 1)[-1].split("-")


def label_from_name(name_or_url: str) -> int:
    """The true digit, from the file name ``digit_<index>_<label>.png`` (kept in the upload name)."""
    stem = Path(str(name_or_url)).name.rsplit(".", 1)[0]
    return int(stem.rsplit("_", 1)[-1])


def backend_env(ls_url: str, token: str, model_dir: Path, **extra) -> Dict[str, str]:
    env = {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token, "MODEL_DIR": str(model_dir),
           # digits are 8x8 grayscale: no point in upscaling them
           "IMAGE_CHANNELS": os.environ.get("IMAGE_CHANNELS", "1"), "IMAGE_SIZE": os.environ.get("IMAGE_SIZE", "8")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------------------- demo entry point
DEMO_TITLE = "Digits (NCAL-R demo)"


def demo_login(work: Path) -> dict:
    """The demo's Label Studio login, kept in ``work/demo-login.json`` so later runs resume (a
    Label Studio that already has its user keeps the first run's password and token)."""
    path = work / "demo-login.json"
    if path.exists():
        login = json.loads(path.read_text())
        if isinstance(login, dict) and isinstance(login.get("password"), str) and isinstance(login.get("token"), str):
            return login
        raise SystemExit(f"{path} is damaged: delete {work} to start the demo afresh")
    if (work / "label-studio").exists():
        raise SystemExit(f"{work} holds a Label Studio from a demo run that did not keep its login: delete "
                         f"{work} (or set DEMO_DIR to another folder) to start the demo afresh")
    login = {"password": secrets.token_urlsafe(10), "token": secrets.token_hex(20)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(login, f)
    return login


def prepare_project(admin: "LSAdmin", work: Path, images: int, backend_url: str,
                    basic: Optional[Tuple[str, str]] = None) -> Tuple[int, dict, int, bool]:
    """(project id, ML backend, task count, resumed): the demo project of an earlier run when it is
    still there (its labels kept), else a new one with ``images`` digit images; connected to the
    backend at ``backend_url`` (an earlier run's connection is pointed here, not duplicated)."""
    state_path = work / "demo-project.json"
    pid = None
    if state_path.exists():
        try:
            pid = int(json.loads(state_path.read_text())["project"])
            admin.project(pid)
        except (ValueError, KeyError, TypeError, RuntimeError):
            pid = None
    resumed = pid is not None
    if pid is None:
        pid = admin.create_project(DEMO_TITLE)
        admin.upload_files(pid, [(name, data) for name, data, _ in digit_pngs(images)])
        state_path.write_text(json.dumps({"project": pid}))
    n = int(admin.project(pid).get("task_number") or 0)
    ours = [b for b in admin.ml_backends(pid) if b.get("title") == "NCAL-R"]
    if ours:  # Label Studio 1.23.2 checks a PATCH like a new connection: it needs the project and auth
        body = {"url": backend_url, "project": pid}
        if basic:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic[0], basic_auth_pass=basic[1])
        ml = admin.req("PATCH", f"/api/ml/{ours[0]['id']}", json=body).json()
    else:
        ml = admin.connect_ml(pid, backend_url, basic_auth=basic)
    return pid, ml, n, resumed


def parse_args(argv=None) -> argparse.Namespace:
    """The demo's options; the environment gives their defaults (LS_PORT, BACKEND_PORT, DEMO_DIR)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def env_port(name: str, default: int) -> int:
        """A port from the environment; empty is unset (found by review, 2026-12-05: LS_PORT= was a
        ValueError traceback), anything else must be a port number, said with the variable's name."""
        raw = (os.environ.get(name) or "").strip()
        if not raw:
            return default
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            ap.error(f"{name}={raw!r}: a port number (1-65535), or unset for {default}")
        return int(raw)

    ap.add_argument("--images", type=int, default=500, help="digit images in the demo project")
    ap.add_argument("--ls-port", type=int, default=env_port("LS_PORT", 8080))
    ap.add_argument("--backend-port", type=int, default=env_port("BACKEND_PORT", 9090))
    # empty is unset too: DEMO_DIR= had put the demo, its admin login and token, into the current
    # directory (the repository root, where `git add -A` would commit them; found by review, 2026-12-05)
    ap.add_argument("--workdir", default=(os.environ.get("DEMO_DIR") or "").strip() or str(ROOT / "runs" / "demo"))
    ap.add_argument("--no-wait", action="store_true", help="set up, print, stop (tests)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    login = demo_login(work)
    ls = LocalLabelStudio(work / "label-studio", port=args.ls_port, password=login["password"], token=login["token"])
    print(f"starting Label Studio on {ls.url} (first start takes about a minute) ...", flush=True)
    ls.start()
    backend = None
    try:
        env = backend_env(ls.url, ls.token, work / "model_dir",
                          **{k: os.environ[k] for k in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS") if os.environ.get(k)},
                          NCALR_MAX_EPOCHS=os.environ.get("NCALR_MAX_EPOCHS", "30"),
                          NCALR_TPT_WINDOW=os.environ.get("NCALR_TPT_WINDOW", "5"),
                          # 8x8 digits on a CPU: a narrow ResNet-18 (cycles of seconds, warm-started at
                          # 0.05), the width the live benchmark measures (bench/live.py DEMO_ENGINE)
                          NCALR_WIDTH=os.environ.get("NCALR_WIDTH", "8"),
                          # a few labels at a 30-epoch cap: one pass of one batch per epoch left the first
                          # cycles near chance (EngineConfig.min_steps_per_epoch; found in a walkthrough)
                          NCALR_MIN_STEPS_PER_EPOCH=os.environ.get("NCALR_MIN_STEPS_PER_EPOCH", "4"),
                          PUBLIC_URL=f"http://127.0.0.1:{args.backend_port}",  # the URL connected below
                          # the demo runs its cycles in the backend: an exported REDIS_URL would send them
                          # to a queue no worker reads; the demo's secret lives in its own MODEL_DIR
                          REDIS_URL="", WEBHOOK_KEY_SECRET="", WEBHOOK_SECRET="")
        backend = BackendProcess(env, port=args.backend_port, log_path=work / "backend.log").start()
        admin = LSAdmin(ls.url, ls.token)
        basic = (env["BASIC_AUTH_USER"], env["BASIC_AUTH_PASS"]) if env.get("BASIC_AUTH_USER") else None
        pid, ml, n, resumed = prepare_project(admin, work, args.images, backend.url, basic)
        print("\n" + "=" * 70)
        print(f" Label Studio : {ls.url}/projects/{pid}/data")
        print(f" login        : {ls.username}  /  {ls.password}   (kept in {work}/demo-login.json)")
        print(f" API token    : {ls.token}")
        print(f" backend      : {backend.url}  (ML backend id {ml['id']}, logs in {work}/backend.log)")
        again = " (resumed: the earlier run's labels are kept)" if resumed else ""
        print(f" demo project : {n} digit images{again}. Label ~10 (or press 'Start training' under")
        print("                Settings > Model), then 'Label All Tasks' serves them in NCAL-R order.")
        print("=" * 70 + "\n Ctrl-C stops both.", flush=True)
        if args.no_wait:
            return 0

        def _stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            while backend.proc.poll() is None and ls.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()


if __name__ == "__main__":
    sys.exit(main())
