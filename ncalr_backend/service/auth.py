"""Who may talk to the backend: HTTP basic auth (optional) and the webhook secret (always).

* **Basic auth** (``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``): every route, ``/health`` included.
  Label Studio sends it on every ML-backend call when the connection is set up with it.
* **Webhook secret** (on by default): ``/webhook`` and ``/train`` change state (they count
  annotations and start cycles), so they need proof that Label Studio sent them. On first start the
  backend generates a secret (``MODEL_DIR/webhook_key_secret``, mode 0600; ``WEBHOOK_KEY_SECRET`` overrides)
  and adds the project's key derived from it (``project_key``) as the ``X-NCALR-Webhook-Secret``
  header to the project webhook Label Studio creates for it (``ensure_webhook_headers``: on
  ``/setup``, and again whenever a webhook arrives without it). A webhook without its project's
  key gets 401 and changes nothing, with basic auth on too (its credentials sit on every using
  project's webhook, readable by members); "Start training" alone passes on basic auth.
* **Start training** is the one exception Label Studio forces: its button posts ``START_TRAINING``
  to ``/webhook`` through the ML-backend connection, which carries basic auth but no custom
  header. Without basic auth such a request is checked against Label Studio itself (the project
  exists and has an ML backend at this backend's address) before a cycle is requested; at most
  CHECK_BUDGET such checks per CHECK_WINDOW_S, over all projects and addresses.
* **The dashboard** (``/``, ``/dashboard/*``) and ``/status`` show task thumbnails, labels, suspected
  label errors and file names: without basic auth they answer only clients on this machine
  (``dashboard_ok``).
See docs/security.md for the threat model.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import requests

from ncalr_backend.atomic import create_once
from ncalr_backend.service.labelstudio import header_value, make_client, read_body, webhook_url
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.urls import parse_http_url, redact_urls, same_url_key

log = logging.getLogger(__name__)


WHOAMI_PATH = "/ncalr/whoami"  # GET ?c=<challenge>: {"proof": HMAC-SHA256(secret, challenge)} (``whoami_proof``)
WHOAMI_TIMEOUT_S = 3.0  # asking a backend URL whether it is this backend: connect + answer
WHOAMI_MAX_BYTES = 4096
WHOAMI_PROBES = 8  # at most this many of a project's ML backends are asked per check
IDENTITY_TTL_S = 600.0  # a URL found to be this backend is believed this long; one found not to be, RESYNC_EVERY_S
_CHALLENGE = re.compile(r"^[0-9a-f]{32}$")


PROBE_THREADS = 16  # whoami probes in flight at once, over all checks
_pool = None
_pool_lock = threading.Lock()


def _probe_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="ncalr-whoami")
        return _pool


def whoami_proof(secret: str, challenge: str) -> str:
    """What this backend answers at WHOAMI_PATH for ``challenge``: only a process that holds the
    webhook secret can give it, and it tells nothing about the secret."""
    if not _CHALLENGE.match(challenge or ""):
        raise ValueError("the challenge must be 32 lower-case hex digits")
    return hmac.new(secret.encode(), b"ncalr-whoami\0" + challenge.encode(), hashlib.sha256).hexdigest()


SECRET_HEADER = "X-NCALR-Webhook-Secret"


def project_key(secret: str, project_id: int) -> str:
    """The value of SECRET_HEADER on project ``project_id``'s webhook: HMAC-SHA256(secret,
    "ncalr-webhook\0" + id), hex. Each project's webhook carries its own key, so whoever reads a
    webhook's headers in Label Studio learns nothing that authenticates a webhook for a project
    whose webhooks they cannot read, nor the secret itself. In Label Studio 1.23 Community every
    member of an organization can read all its webhooks (its permissions are "logged in"), so
    there the boundary is the organization, not the project (found by review)."""
    if isinstance(project_id, bool) or not isinstance(project_id, int) or project_id <= 0:
        raise ValueError("project_id must be a positive integer")
    return hmac.new(secret.encode(), b"ncalr-webhook\0" + str(project_id).encode(), hashlib.sha256).hexdigest()
SECRET_FILE = "webhook_key_secret"  # what project keys derive from; never on a webhook
LEGACY_SECRET_FILE = "webhook_secret"  # before 2026-12-01: the value every webhook carried (exposed)
RESYNC_EVERY_S = 30.0  # at most one header repair (or connection check) per project in this time
MAX_RESYNCS = 20  # ... and at most this many projects' repairs in that time
CHECK_BUDGET = 20  # at most this many Label Studio checks of unauthenticated "Start training"s ...
CHECK_WINDOW_S = 30.0  # ... in this time, over all projects and Host headers together
DASHBOARD_CLOSED = ("the dashboard and /status answer only this machine (loopback) while basic auth is off: set "
                    "BASIC_AUTH_USER and BASIC_AUTH_PASS to open them to other machines")


def is_loopback(addr: Optional[str]) -> bool:
    """``addr`` (a request's remote address) is this machine: 127.0.0.0/8, ::1, ::ffff:127.x."""
    try:
        ip = ipaddress.ip_address((addr or "").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def load_or_create_secret(model_dir: Path, override: Optional[str] = None) -> str:
    """The secret project keys derive from: ``override`` (WEBHOOK_KEY_SECRET) if given, else the one
    in ``model_dir`` (SECRET_FILE, created once, atomically, readable by the owner only; concurrent
    first starts agree on one). Not LEGACY_SECRET_FILE: that value was on every project's webhook,
    readable by its members, and keys derived from it would be known too (found by review)."""
    if override:
        return override
    # written whole, then linked in place (atomic.create_once): the name appears with its value or not
    # at all (found by review, 2026-12-05: it was created empty, then written, and a process that died
    # in between left a file every later start refused), and a concurrent first start that links first
    # wins for both
    return create_once(Path(model_dir) / SECRET_FILE, lambda: secrets.token_urlsafe(32),
                       "delete it and restart to generate a new webhook secret")


def legacy_secret(settings: Settings) -> Optional[str]:
    """The value every webhook carried before per-project keys (WEBHOOK_SECRET, or
    LEGACY_SECRET_FILE in MODEL_DIR), or None: only to recognise it on a webhook and replace it."""
    if settings.legacy_webhook_secret:
        return settings.legacy_webhook_secret
    try:
        return (Path(settings.model_dir) / LEGACY_SECRET_FILE).read_text().strip() or None
    except OSError:
        return None


def our_webhook_header(settings: Settings, project_id: int) -> Optional[tuple]:
    """(SECRET_HEADER, key): the header this backend adds to project ``project_id``'s webhook
    (``project_key``), by which a cycle tells its project's webhooks apart
    (``LabelStudioClient.not_connected_reason``); None while no secret exists yet. Reads, never
    creates: a cycle worker must not mint a second secret."""
    value = settings.webhook_secret
    if not value:
        try:
            value = (Path(settings.model_dir) / SECRET_FILE).read_text().strip()
        except OSError:
            return None
    return (SECRET_HEADER, project_key(value, project_id)) if value else None


def _patch(hook: dict, headers: dict) -> dict:
    """The PATCH body that sets a webhook's headers and keeps its actions: Label Studio 1.23 sets a
    webhook's actions to the body's list on every update, [] when absent (found by review: a
    headers-only PATCH emptied a hand-made webhook's chosen actions)."""
    actions = hook.get("actions")
    return {"headers": headers, "actions": list(actions) if isinstance(actions, list) else []}


def connection_check(settings: Settings, project_id: int) -> tuple:
    """The arguments after the project id of ``LabelStudioClient.not_connected_reason`` for this
    backend: (its webhook header for the project, PUBLIC_URL, the basic-auth user)."""
    header = our_webhook_header(settings, project_id)
    if header is None:
        log.warning("project %s: this process cannot read the backend's key secret (%s in MODEL_DIR, or "
                    "WEBHOOK_KEY_SECRET): cycle workers need the web process's MODEL_DIR or the same "
                    "WEBHOOK_KEY_SECRET to tell this backend's webhook from others'", project_id, SECRET_FILE)
    return header, settings.public_url or None, settings.basic_auth_user or None


def basic_header(settings: Settings) -> str:
    """The Authorization value for this backend's own basic-auth credentials."""
    return "Basic " + base64.b64encode(f"{settings.basic_auth_user}:{settings.basic_auth_pass}".encode()).decode()


class Auth:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.secret = load_or_create_secret(settings.model_dir, settings.webhook_secret)
        self.legacy = legacy_secret(settings)
        if self.legacy and hmac.compare_digest(self.secret.encode(), self.legacy.encode()):
            raise RuntimeError(  # found by review: the old file's value copied into WEBHOOK_KEY_SECRET
                "WEBHOOK_KEY_SECRET equals the old webhook secret (MODEL_DIR/webhook_secret), which every project's "
                "webhook carried and its members could read: set WEBHOOK_KEY_SECRET to a NEW value")
        if not settings.public_url and not settings.basic_auth_user:
            log.info("PUBLIC_URL is not set: this backend finds its own ML backend in a project by asking each "
                     "backend URL Label Studio has for the project to prove it holds this backend's secret (%s); "
                     "a URL it cannot reach from here is not recognised: then set PUBLIC_URL (docs/security.md)",
                     WHOAMI_PATH)
        self._identity: dict = {}  # same_url_key -> (when, is this backend)
        self._resync_at: dict = {}
        self._checked: dict = {}  # project -> (when, has this backend)
        self._in_flight: set = set()  # projects whose check runs now
        self._check_times: deque = deque()  # when each of the recent Label Studio checks was made
        self._budget_warned_at = float("-inf")
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ checks
    def basic_ok(self, authorization) -> bool:
        s = self.settings
        if not s.basic_auth_user:
            return True
        if authorization is None or authorization.type != "basic":
            return False
        return (hmac.compare_digest((authorization.username or "").encode(), s.basic_auth_user.encode())
                and hmac.compare_digest((authorization.password or "").encode(), s.basic_auth_pass.encode()))

    def dashboard_ok(self, remote_addr: Optional[str]) -> bool:
        """The dashboard (``/``, ``/dashboard/*``: task thumbnails, labels, errors) and ``/status``
        may answer this client: with basic auth on, whoever passed it (``basic_ok``, checked
        before); without, only this machine."""
        return bool(self.settings.basic_auth_user) or is_loopback(remote_addr)

    def webhook_ok(self, headers, project_id: Optional[int], action: str = "") -> bool:
        """A request to /webhook or /train about ``project_id`` (the payload's, parsed once by the
        caller) is authentic: SECRET_HEADER carries that project's key (``project_key``), or, for
        "Start training" alone (``action`` START_TRAINING or train: Label Studio's button sends no
        custom header), basic auth (checked before this). Every other webhook needs the key with
        basic auth on too: basic auth's credentials sit on the webhook of every project that uses
        this backend, readable by its members, and with them alone a member of one project could
        send annotations events naming any other (found by review). Without a project id there is
        no key to check."""
        if self.settings.basic_auth_user and action in ("START_TRAINING", "train"):
            return True
        return self.key_ok(headers, project_id)

    def key_ok(self, headers, project_id: Optional[int]) -> bool:
        """SECRET_HEADER carries project ``project_id``'s key."""
        if project_id is None:
            return False
        given = headers.get(SECRET_HEADER) or ""
        return hmac.compare_digest(given.encode(), project_key(self.secret, project_id).encode())

    def basic_header(self) -> str:
        return basic_header(self.settings)

    def wanted_headers(self, project_id: int) -> dict:
        """The headers project ``project_id``'s webhook for this backend must carry."""
        h = {SECRET_HEADER: project_key(self.secret, project_id)}
        if self.settings.basic_auth_user:
            h["Authorization"] = self.basic_header()
        return h

    def whoami(self, challenge: str) -> str:
        """The answer of WHOAMI_PATH (ValueError for a malformed challenge)."""
        return whoami_proof(self.secret, challenge)

    def is_this_backend(self, url: str) -> bool:
        """Whether ``url`` (a project's ML backend URL in Label Studio's records) reaches this backend:
        ``GET <origin><path>/ncalr/whoami?c=<fresh random challenge>`` must answer with the proof only
        the holder of this backend's secret can compute (``whoami_proof``). The probe URL is built
        from the parsed origin and path (a backend URL with a query or fragment is not probed); no
        credential is sent, no proxy from the environment is used, redirects are not followed, and
        each read waits at most WHOAMI_TIMEOUT_S and the body (at most WHOAMI_MAX_BYTES) must arrive
        within it (headers dripped a byte at a time can hold the probe longer: ``_proven`` does
        not wait for it). A URL this
        backend cannot reach (Label Studio knows it by another name) is not recognised. A yes is
        kept IDENTITY_TTL_S, a no RESYNC_EVERY_S; a probe that ran out of time is not kept (it may
        have been this backend, busy)."""
        key, now = same_url_key(url), time.time()
        if key is None:
            return False
        with self._lock:
            hit = self._identity.get(key)
            if hit is not None and now - hit[0] < (IDENTITY_TTL_S if hit[1] else RESYNC_EVERY_S):
                return hit[1]
        raw = str(url).strip()
        if "?" in raw or "#" in raw:
            return False  # the probe would go to a query of someone's choosing
        end = time.monotonic() + WHOAMI_TIMEOUT_S
        challenge = secrets.token_hex(16)
        ok, timed_out = False, False
        try:
            origin, path = key
            probe = parse_http_url(f"{origin}{path}{WHOAMI_PATH}?c={challenge}")
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no time left for this probe")
            with requests.Session() as http:
                http.trust_env = False  # HTTP(S)_PROXY, .netrc: not for asking a URL whether it is us
                with http.get(probe.url, timeout=left, allow_redirects=False, stream=True,
                              headers={"Accept": "application/json"}) as r:
                    if r.status_code == 200:
                        body = read_body(r, WHOAMI_MAX_BYTES, max(0.0, end - time.monotonic()), "whoami")
                        proof = json.loads(body).get("proof")
                        ok = isinstance(proof, str) and hmac.compare_digest(
                            proof.encode(), whoami_proof(self.secret, challenge).encode())
        except Exception as exc:  # unreachable, refused, not JSON, too large, too slow: not us
            timed_out = time.monotonic() >= end or isinstance(exc, (requests.Timeout, TimeoutError))
            log.debug("%s does not prove to be this backend: %s", redact_urls(raw), exc)
        if not timed_out:
            with self._lock:
                if len(self._identity) > 10000:
                    self._identity.clear()
                self._identity[key] = (now, ok)
        return ok

    def _proven(self, backends: list) -> list:
        """The backends whose URL proves to be this backend, probed side by side on a small pool of
        threads (PROBE_THREADS, shared by all checks); the caller waits at most WHOAMI_TIMEOUT_S in
        all, so a backend that never answers neither hides the others (found by review: one probe
        after another under one deadline, a dead backend listed first used it up every time) nor
        holds a request thread. A probe still running then does not count (its answer is kept
        when it comes)."""
        if not backends:
            return []
        futures = [_probe_pool().submit(self.is_this_backend, str(b.get("url") or "")) for b in backends]
        done, late = wait(futures, timeout=WHOAMI_TIMEOUT_S)
        for f in late:
            f.cancel()  # not started yet (the pool is busy): dropped
        return [b for b, f in zip(backends, futures) if f in done and f.exception() is None and f.result()]

    # ------------------------------------------------------------------ Label Studio side
    def _our_backends(self, client, project_id: int, host: Optional[str], only_one_counts: bool = True) -> list:
        """The project's ML backends that are this backend: at ``PUBLIC_URL``'s address when it is
        set (then nothing else counts). Without it and without basic auth: those whose URL proves to
        reach this backend (``is_this_backend``); the request's Host header decides nothing (a client
        sets it at will: naming another team's backend once put our secret on that team's webhook).
        With basic auth (every request that gets here passed it): the backends with our user, at
        the address the request named (its Host header) or (``only_one_counts``) the only one."""
        backends = [b for b in client.list_ml_backends(project_id) if isinstance(b, dict)]
        if self.settings.public_url:
            if self.settings.basic_auth_user:
                backends = [b for b in backends if b.get("basic_auth_user") == self.settings.basic_auth_user]
            ours = same_url_key(self.settings.public_url)
            return [b for b in backends if ours is not None and same_url_key(str(b.get("url") or "")) == ours]
        if not self.settings.basic_auth_user:
            return self._proven(backends[:WHOAMI_PROBES])
        backends = [b for b in backends if b.get("basic_auth_user") == self.settings.basic_auth_user]
        if host:
            ours = [b for b in backends if urlsplit(str(b.get("url") or "")).netloc.lower() == host.lower()]
            if ours:
                return ours
        return backends if only_one_counts and len(backends) == 1 else []

    def project_has_us(self, project_id: int) -> bool:
        """Label Studio's "Start training" without basic auth (no custom header): accepted only for a
        project one of whose ML backends in Label Studio's records is this backend: at exactly
        ``PUBLIC_URL`` when it is set, else at a URL that proves it (``is_this_backend``). The
        request's Host header decides nothing (a client sets it at will: naming another team's
        backend address started cycles in that team's project), and neither does a webhook
        carrying our secret (found by review). The answer is kept for RESYNC_EVERY_S, so
        unauthenticated requests cannot make the backend hammer Label Studio; a request for a
        project whose check is running is refused (one check per project at a time, at most
        WHOAMI_TIMEOUT_S of probing); and requests varying the project id get at most CHECK_BUDGET
        checks per CHECK_WINDOW_S in all: beyond that the answer is False, without asking Label
        Studio (logged once per window)."""
        key, now = project_id, time.time()
        with self._lock:
            hit = self._checked.get(key)
            if hit is not None and now - hit[0] < RESYNC_EVERY_S:
                return hit[1]
            if key in self._in_flight:  # the same check runs now: this press is a duplicate, refused
                return False
            if len(self._checked) > 10000:
                self._checked.clear()
            while self._check_times and now - self._check_times[0] >= CHECK_WINDOW_S:
                self._check_times.popleft()
            known = (self.settings.model_dir / "projects" / str(int(project_id))).is_dir()
            if not known and len(self._check_times) >= CHECK_BUDGET:  # a project this backend has served
                # keeps its own check (one per RESYNC_EVERY_S each): made-up ids cannot spend it
                if now - self._budget_warned_at >= CHECK_WINDOW_S:
                    self._budget_warned_at = now
                    log.warning("more than %d unauthenticated START_TRAINING checks in %.0f s (varying project "
                                "ids): refused without asking Label Studio; turn basic auth on, "
                                "or check who sends them", CHECK_BUDGET, CHECK_WINDOW_S)
                return False
            if not known:
                self._check_times.append(now)
            self._in_flight.add(key)
        try:
            ok = bool(self._our_backends(make_client(self.settings), project_id, None, only_one_counts=False))
        except Exception as exc:
            log.warning("project %s: cannot check the ML backend connection with Label Studio: %s", project_id, exc)
            ok = False
        finally:
            with self._lock:
                self._in_flight.discard(key)
        if not ok and self.settings.public_url:
            log.warning("project %s: Start training refused: no ML backend of the project is at PUBLIC_URL (%s) in "
                        "Label Studio; PUBLIC_URL must be the URL entered in the project's Model settings",
                        project_id, redact_urls(self.settings.public_url))
        elif not ok:
            log.warning("project %s: Start training refused: no ML backend URL of the project in Label Studio "
                        "reaches this backend from here (%s); if Label Studio knows it by an address this backend "
                        "cannot reach, set PUBLIC_URL to that address", project_id, WHOAMI_PATH)
        with self._lock:
            self._checked[key] = (now, ok)
        return ok

    def ensure_webhook_headers(self, project_id: int, host: Optional[str], delays=(0.5, 2, 5, 15)) -> bool:
        """Add the secret (and basic auth) to the webhook Label Studio created for this backend (at
        its URL + /webhook), or renew it there when it carries an old value. Which backend is this
        one: ``_our_backends``. With basic auth and without
        PUBLIC_URL, its fallback to a project's only backend applies only while no webhook of the
        project carries the header: once one does, the only backend may be another service connected
        in our place, and our secret must not go to its webhook."""
        try:
            client = make_client(self.settings)
        except Exception:
            return False
        want = self.wanted_headers(project_id)
        for delay in delays:
            time.sleep(delay)
            try:
                every = [h for h in client.list_webhooks(project_id) if isinstance(h, dict)]
                marked = [h for h in every if isinstance(h.get("headers"), dict)
                          and header_value(h["headers"], SECRET_HEADER)]
                urls = {webhook_url(b["url"])
                        for b in self._our_backends(client, project_id, host, only_one_counts=not marked)}
                # only the webhooks at our backends' addresses: a webhook carrying our header proves
                # nothing (anyone who may edit a project's webhooks can add the header to one at their
                # own URL, and renewing it sent them the secret; found by review)
                hooks = [h for h in every if str(h.get("url", "")).rstrip("/") in urls
                         and h.get("project") in (None, project_id)]
                for h in hooks:
                    have = h.get("headers") or {}
                    if any(have.get(k) != v for k, v in want.items()):
                        keep = {k: v for k, v in have.items() if str(k).lower() not in {w.lower() for w in want}}
                        client.patch_webhook(h["id"], _patch(h, {**keep, **want}))  # no second spelling
                        log.info("project %s: set the webhook secret%s on webhook %s", project_id,
                                 " and basic auth" if "Authorization" in want else "", h["id"])
                # before per-project keys every webhook carried the one secret: where a webhook of this
                # project still carries exactly that value (ours at an address Label Studio no longer
                # lists for the backend, its URL edited since), replace it by the project's key alone.
                # Whoever can put a webhook on this project can read its webhooks' headers in Label
                # Studio 1.23 (any member of the organization), so the key tells them nothing new;
                # no basic-auth header goes to such a webhook.
                legacy = [h for h in every if h not in hooks and h.get("project") in (None, project_id)
                          and self.legacy and isinstance(h.get("headers"), dict)
                          and hmac.compare_digest(header_value(h["headers"], SECRET_HEADER).encode(),
                                                  self.legacy.encode())]
                for h in legacy:
                    keep = {k: v for k, v in h["headers"].items() if str(k).lower() != SECRET_HEADER.lower()}
                    client.patch_webhook(h["id"], _patch(h, {**keep, SECRET_HEADER: want[SECRET_HEADER]}))
                    log.info("project %s: replaced the old shared webhook secret by the project's key on webhook %s",
                             project_id, h["id"])
                if hooks or legacy:
                    return True
            except Exception as exc:
                log.warning("project %s: cannot update the webhook's headers yet: %s", project_id, exc)
        if self.settings.public_url:
            log.warning("project %s: no ML backend of the project is at PUBLIC_URL (%s) in Label Studio, so its "
                        "webhook does not get the secret and webhooks from Label Studio will be refused: set "
                        "PUBLIC_URL to the URL entered in the project's Model settings (docs/security.md)",
                        project_id, redact_urls(self.settings.public_url))
            return False
        log.warning("project %s: found no webhook of this backend to add its secret to (no ML backend URL of the "
                    "project reaches this backend from here); webhooks from Label Studio will be refused until it "
                    "has the header %s: set PUBLIC_URL to this backend's URL as entered in Label Studio "
                    "(docs/security.md)", project_id, SECRET_HEADER)
        return False

    def resync_soon(self, project_id: int, host: Optional[str]) -> None:
        """Repair the webhook's headers in the background, at most once per RESYNC_EVERY_S."""
        now = time.time()
        with self._lock:
            if now - self._resync_at.get(project_id, 0.0) < RESYNC_EVERY_S:
                return
            recent = [t for t in self._resync_at.values() if now - t < RESYNC_EVERY_S]
            if len(recent) >= MAX_RESYNCS:  # many project ids at once: not Label Studio, refuse the work
                return
            if len(self._resync_at) > 10000:
                self._resync_at = {p: t for p, t in self._resync_at.items() if now - t < RESYNC_EVERY_S}
            self._resync_at[project_id] = now
        threading.Thread(target=self.ensure_webhook_headers, args=(project_id, host), daemon=True).start()
