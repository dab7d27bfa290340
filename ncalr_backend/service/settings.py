"""Service settings, read once from the environment and validated.

Every setting of the Label Studio service lives here (the engine's own settings are
``EngineConfig.from_env(prefix="NCALR_")`` in :mod:`ncalr_backend.engine`). A bad value fails at
start-up with a message that names the variable and says what it accepts.

=============================  ==========================  =========================================
Variable                       Default                     Meaning
=============================  ==========================  =========================================
LABEL_STUDIO_URL               (required for cycles)       Base URL of Label Studio, e.g.
                                                           ``http://localhost:8080``
LABEL_STUDIO_API_KEY           (required for cycles)       Legacy token or personal access token
MODEL_DIR                      ``./model_dir``             Weights, scores, reports, image cache
REDIS_URL                      (unset: embedded worker)    Send cycles to an RQ queue instead
RQ_QUEUE                       ``ncalr``                   RQ queue name
BASIC_AUTH_USER / _PASS        (unset: no auth)            HTTP basic auth for every route (/health too)
WEBHOOK_KEY_SECRET             (generated, in MODEL_DIR)   Secret each project's webhook key is derived
                                                           from (header X-NCALR-Webhook-Secret: the key)
WEBHOOK_SECRET                 (unset)                     Before 2026-12-01 the value every webhook
                                                           carried; only with a new WEBHOOK_KEY_SECRET,
                                                           to recognise and replace it on webhooks
TRAIN_TRIGGER_FRACTION         ``0.02``                    New annotations (fraction of the project's
                                                           tasks) that start a cycle
TRAIN_TRIGGER_MIN              ``10``                      Floor of that count
IMAGE_SIZE                     ``32`` (or NCALR_IMAGE_SIZE) Images are resized to this square size
IMAGE_CHANNELS                 ``3``                       1 (grayscale) or 3 (RGB)
ALLOWED_IMAGE_HOSTS            (none)                      Other origins images may come from, never with
                                                           the key (comma list of host, host:port or
                                                           scheme://host[:port]; host alone = port 80/443)
SET_SAMPLING                   ``true``                    Switch the project to "Uncertainty sampling"
PREDICTION_CHUNK_SIZE          ``500``                     Predictions per bulk-import request (<= 500)
PAGE_SIZE                      ``500``                     Tasks per request when reading tasks
HTTP_TIMEOUT                   ``60``                      Seconds per Label Studio request
DOWNLOAD_WORKERS               ``16``                      Parallel image downloads (kept-alive
                                                           connections, one pool per worker)
WRITE_BACK_TOP                 ``auto``                    Ranked tasks a cycle writes to Label Studio,
                                                           the head of the order: auto = max(1000,
                                                           2 x the cycle trigger), N = exactly N,
                                                           0 = all; /predict serves the rest
CYCLE_RETRY_DELAYS             ``10,30,60,120,300,600,900`` Seconds before each retry of a cycle that
                                                           failed for a reason that may pass
RQ_LOCK_TTL                    ``60``                      Seconds a dead RQ worker holds a project
KEEP_CYCLES                    ``5``                       Completed cycle directories kept on disk
KEEP_FAILED                    ``10``                      Failed cycle directories kept on disk
CACHE_MAX_MB                   ``2048``                    Image cache size cap (least recently used go)
RELABEL_SHARE                  ``0`` (off)                 Share of a cycle's annotation budget spent on
                                                           re-annotating the most suspect labels
LOCAL_FILES_DOCUMENT_ROOT      (unset: off)                Label Studio's LOCAL_FILES_DOCUMENT_ROOT, seen
                                                           at the same path on this machine: read Local
                                                           Files images from the disk, not over HTTP
                                                           (``service/localfiles.py``)
PUBLIC_URL                     (unset: proof, /whoami)     This backend's URL as Label Studio has it
                                                           (Model settings): which ML backend and
                                                           webhook of a project are this one
                                                           (``service/auth.py``; docs/security.md)
LOG_LEVEL                      ``INFO``                    A Python logging level name (read by
                                                           ``_wsgi.py``; listed here so a misspelt
                                                           name is caught)
=============================  ==========================  =========================================
"""

from __future__ import annotations

import hmac
import math
import os
import re
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlsplit

from ncalr_backend.service.urls import URLRefused, parse_http_url


AUTO_WRITE_BACK_TOP = 1000


class SettingsError(ValueError):
    """A setting has a value the service cannot use."""


def _get(env: Mapping[str, str], name: str) -> Optional[str]:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _int(env, name, default, lo=None, hi=None) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected an integer") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SettingsError(f"{name}={value}: expected a value in [{lo}, {hi}]")
    return value


def _float(env, name, default, lo=None, hi=None) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r}: expected a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SettingsError(f"{name}={value}: expected a value in [{lo}, {hi}]")
    return value


def _bool(env, name, default) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r}: expected true/false")


MAX_DELAY_S = 86400.0  # a day; a timer much longer overflows the scheduler's wait (threading.TIMEOUT_MAX)


def _delays(env, name, default) -> tuple:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() == "none":
        return ()
    try:
        out = tuple(float(x) for x in raw.split(",") if x.strip())
    except ValueError:
        out = (-1.0,)
    if not out or any(not math.isfinite(v) or not 0 <= v <= MAX_DELAY_S for v in out):
        raise SettingsError(f"{name}={raw!r}: expected a comma list of seconds in [0, {MAX_DELAY_S:.0f}], e.g. "
                            "10,30,60 (none: never retry)")
    return out


def _document_root(env, name) -> Optional[str]:
    raw = _get(env, name)
    if raw is None:
        return None
    if "\x00" in raw or not os.path.isabs(raw):
        raise SettingsError(f"{name}={raw!r}: expected an absolute directory path (Label Studio's "
                            "LOCAL_FILES_DOCUMENT_ROOT, where this machine sees the same disk)")
    path = os.path.normpath(raw)
    if path == os.sep:
        raise SettingsError(f"{name}={raw!r}: the file system root would make every readable file a "
                            "Local File; use the directory Label Studio's storages live under")
    if not os.path.isdir(path):
        raise SettingsError(f"{name}={raw!r}: not a directory on this machine (unset it to fetch Local "
                            "Files over HTTP)")
    return path


def _base_url(name: str, raw: str, expected: str, example: str):
    """(url without a trailing slash, its parts): an http(s) URL without query or fragment, read by
    the parser the Label Studio client uses (``urls.parse_http_url``): one decides."""
    url = raw.rstrip("/")
    try:
        safe = parse_http_url(url + "/")
    except URLRefused as exc:
        raise SettingsError(f"{name}={raw!r}: expected {expected}, such as {example} ({exc})") from None
    parts = urlsplit(safe.url)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise SettingsError(f"{name}={raw!r}: a URL with a query or fragment (one copied from the browser?); "
                            f"expected {expected}, such as {example}")
    return url, parts


def _url(name: str, raw: Optional[str]) -> Optional[str]:
    if raw is None:
        return None
    url, parts = _base_url(name, raw, "Label Studio's base URL, an http(s) URL", "http://localhost:8080")
    segments = [s.lower() for s in parts.path.split("/") if s]
    for bad in ("api", "projects"):
        if bad in segments:
            raise SettingsError(f"{name}={raw!r}: the path holds /{bad}/, a page or API route of Label Studio; "
                                "expected its base URL, such as http://localhost:8080 (keep a path only when "
                                "Label Studio itself is served under one)")
    return url


def _public_url(raw: Optional[str]) -> Optional[str]:
    """PUBLIC_URL: this backend's URL as Label Studio has it (the project's Model settings)."""
    if raw is None:
        return None
    return _base_url("PUBLIC_URL", raw, "this backend's URL as entered in Label Studio's Model settings",
                     "http://ncalr-backend.internal:9090")[0]


_KEY_PREFIX = re.compile(r"^(token|bearer)\s+", re.IGNORECASE)


def _api_key(raw: Optional[str]) -> Optional[str]:
    """The key as Label Studio shows it: quotes around it and a pasted ``Token ``/``Bearer `` prefix
    are taken off (the client adds the right one itself); whitespace inside is refused."""
    if raw is None:
        return None
    quotes = "'\"\u2018\u2019\u201c\u201d"  # straight and typographic (a key pasted from a document)
    key = raw.strip().strip(quotes).strip()
    key = _KEY_PREFIX.sub("", key).strip().strip(quotes)
    if not key or any(c.isspace() for c in key):
        raise SettingsError("LABEL_STUDIO_API_KEY: expected the token alone, as Label Studio's Account & Settings "
                            "shows it (a legacy token or a personal access token), without spaces")
    if not (key.isascii() and key.isprintable()):  # an HTTP header could not carry it: every request would fail
        bad = next(c for c in key if not (c.isascii() and c.isprintable()))
        raise SettingsError(f"LABEL_STUDIO_API_KEY holds {bad!r} (U+{ord(bad):04X}), which no token has: copy it "
                            "again from Label Studio's Account & Settings")
    return key


# every variable the service reads (the engine's are NCALR_<SETTING>, checked by EngineConfig.from_env)
NAMES = frozenset({
    "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MODEL_DIR", "REDIS_URL", "RQ_QUEUE", "BASIC_AUTH_USER",
    "BASIC_AUTH_PASS", "WEBHOOK_KEY_SECRET", "WEBHOOK_SECRET", "TRAIN_TRIGGER_FRACTION", "TRAIN_TRIGGER_MIN",
    "IMAGE_SIZE", "IMAGE_CHANNELS", "ALLOWED_IMAGE_HOSTS", "SET_SAMPLING", "PREDICTION_CHUNK_SIZE", "PAGE_SIZE",
    "HTTP_TIMEOUT", "DOWNLOAD_WORKERS", "WRITE_BACK_TOP", "CYCLE_RETRY_DELAYS", "RQ_LOCK_TTL", "KEEP_CYCLES",
    "KEEP_FAILED", "CACHE_MAX_MB", "RELABEL_SHARE", "LOCAL_FILES_DOCUMENT_ROOT", "PUBLIC_URL", "LOG_LEVEL"})


def _check_names(env: Mapping[str, str]) -> None:
    """A variable one or two letters off a setting's name (TRAIN_TRIGER_MIN, DOWNLOAD_WORKER) would
    be ignored and its default used without a word: refused, with the name it probably meant."""
    import difflib
    for key in env:
        if key in NAMES or len(key) < 8 or key.startswith("NCALR_") or not str(env[key]).strip():
            continue
        near = difflib.get_close_matches(key.upper(), NAMES, n=1, cutoff=0.88)
        if near:
            raise SettingsError(f"{key} is not a setting: did you mean {near[0]}?")


def _model_dir(raw: Optional[str]) -> Path:
    try:
        path = Path(raw or "model_dir").expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # "~nosuchuser/x"
        raise SettingsError(f"MODEL_DIR={raw!r}: {exc}; give an absolute path") from None
    if path.exists() and not path.is_dir():
        raise SettingsError(f"MODEL_DIR={str(path)!r} is a file: give a directory (it is created if missing)")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"MODEL_DIR={str(path)!r} is not writable by this user")
    if raw and not path.exists():  # a path the operator gave, created at start: probed now, so one that cannot
        # be is said with the variable's name (found by review, 2026-12-05: /proc/x or a path under a file died
        # later in label-studio-ml with a bare traceback). Probed in its nearest existing parent, with a temporary
        # directory removed again: reading settings creates nothing (bench and tests read them too)
        parent = next(p for p in path.parents if p.exists())
        try:
            if not parent.is_dir():
                raise NotADirectoryError(20, "Not a directory")
            os.rmdir(tempfile.mkdtemp(prefix=".ncalr-probe-", dir=parent))
        except OSError as exc:
            raise SettingsError(f"MODEL_DIR={str(path)!r} cannot be created ({exc.strerror or exc} in "
                                f"{str(parent)!r}): give a directory this user can write (it is created if "
                                "missing)") from None
    return path


def _redacted(url: str) -> str:
    """A URL as an error message may show it: without its user info (a password)."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def _redis_url(raw: Optional[str]) -> Optional[str]:
    """REDIS_URL, checked as redis-py will read it (found by review, 2026-12-05: a named database
    "/ncalr2" was ignored by redis-py, so two backends "apart" shared db 0 and its keys; an unknown
    query argument or a bad port started fine and made every keyed request a 500)."""
    if raw is None:
        return None
    shown = _redacted(raw)
    try:
        sp = urlsplit(raw)
        sp.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL={shown!r}: {exc}; expected redis://host:port/db") from None
    if sp.scheme not in ("redis", "rediss", "unix") or (sp.scheme != "unix" and not sp.hostname):
        raise SettingsError(f"REDIS_URL={shown!r}: expected redis://host:port/db")
    if sp.scheme == "unix" and not sp.path:
        raise SettingsError(f"REDIS_URL={shown!r}: a unix socket URL needs the socket's path: unix:///path/redis.sock")
    if sp.scheme != "unix" and not re.fullmatch(r"/?|/[0-9]+", sp.path):
        raise SettingsError(f"REDIS_URL={shown!r}: the database is a number (redis://host:6379/0); Redis has no "
                            "named databases, and RQ_QUEUE keeps two backends on one database apart")
    try:
        import redis
    except ImportError:  # the scheduler says so when it starts
        return raw
    try:  # redis-py's own reading of the URL, and the connection it would make (no I/O until used)
        redis.ConnectionPool.from_url(raw).make_connection()
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"REDIS_URL={shown!r}: redis-py cannot use it ({_redacted(str(exc))})") from None
    return raw


@dataclass(frozen=True)
class Settings:
    label_studio_url: Optional[str] = None
    label_studio_api_key: Optional[str] = field(default=None, repr=False)
    model_dir: Path = Path("model_dir")
    redis_url: Optional[str] = None
    rq_queue: str = "ncalr"
    basic_auth_user: Optional[str] = None
    basic_auth_pass: Optional[str] = field(default=None, repr=False)
    webhook_secret: Optional[str] = field(default=None, repr=False)
    """WEBHOOK_KEY_SECRET: what each project's webhook key is derived from (auth.project_key)."""
    legacy_webhook_secret: Optional[str] = field(default=None, repr=False)
    """WEBHOOK_SECRET: the value every webhook carried before per-project keys (exposed: replaced on
    webhooks where found, never accepted)."""
    train_trigger_fraction: float = 0.02
    train_trigger_min: int = 10
    image_size: int = 32
    image_channels: int = 3
    allowed_image_hosts: tuple = ()
    set_sampling: bool = True
    prediction_chunk_size: int = 500
    page_size: int = 500
    http_timeout: float = 60.0
    download_workers: int = 16
    write_back_top: Optional[int] = None  # None = auto
    cycle_retry_delays: tuple = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)
    rq_lock_ttl: int = 60
    keep_cycles: int = 5
    keep_failed: int = 10
    cache_max_mb: int = 2048
    relabel_share: float = 0.0
    local_files_document_root: Optional[str] = None
    public_url: Optional[str] = None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        env = os.environ if env is None else env
        _check_names(env)
        user, pw = _get(env, "BASIC_AUTH_USER"), _get(env, "BASIC_AUTH_PASS")
        if bool(user) != bool(pw):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if user and ":" in user:
            raise SettingsError("BASIC_AUTH_USER: a user name cannot hold ':' (HTTP basic auth splits at the "
                                "first colon, so no request could ever log in)")
        for name, value in (("BASIC_AUTH_USER", user), ("BASIC_AUTH_PASS", pw)):
            if value and not all(" " <= ch <= "~" for ch in value):
                # found by review, 2026-12-05: Label Studio sends basic auth encoded as latin-1 and the
                # server reads UTF-8, so an 'ö' never logged Label Studio in, while this backend's own
                # health check (UTF-8) passed
                raise SettingsError(f"{name}: use printable ASCII characters only (letters, digits, punctuation, "
                                    "space): Label Studio encodes basic auth as latin-1 and this backend reads "
                                    "UTF-8, so any other character would never log Label Studio in")
        redis_url = _redis_url(_get(env, "REDIS_URL"))
        secret, legacy = _get(env, "WEBHOOK_KEY_SECRET"), _get(env, "WEBHOOK_SECRET")
        if secret is not None and len(secret) < 16:
            raise SettingsError("WEBHOOK_KEY_SECRET: at least 16 characters (it is all that stands between anyone "
                                "who can reach the port and /webhook); unset it and the backend generates one")
        if legacy is not None and (secret is None or hmac.compare_digest(secret.encode(), legacy.encode())):
            raise SettingsError(
                "WEBHOOK_SECRET is replaced by WEBHOOK_KEY_SECRET: its value was the header on every project's "
                "webhook, where Label Studio shows it to the project's members, so keys derived from it would be "
                "known too. Set WEBHOOK_KEY_SECRET to a NEW value of at least 16 characters (or unset both and the "
                "backend generates one); WEBHOOK_SECRET may stay set beside it for a while, so the backend can "
                "recognise the old value on webhooks and replace it (docs/security.md)")
        channels = _int(env, "IMAGE_CHANNELS", 3)
        if channels not in (1, 3):
            raise SettingsError(f"IMAGE_CHANNELS={channels}: expected 1 (grayscale) or 3 (RGB)")
        hosts = tuple(h.strip().lower() for h in (_get(env, "ALLOWED_IMAGE_HOSTS") or "").split(",") if h.strip())
        from ncalr_backend.service.urls import URLRefused, parse_host_rules
        try:
            parse_host_rules(hosts)
        except URLRefused as exc:
            raise SettingsError(f"ALLOWED_IMAGE_HOSTS: {exc}; expected a comma list of host, host:port or "
                                "scheme://host[:port]") from None
        return cls(
            label_studio_url=_url("LABEL_STUDIO_URL", _get(env, "LABEL_STUDIO_URL")),
            label_studio_api_key=_api_key(_get(env, "LABEL_STUDIO_API_KEY")),
            model_dir=_model_dir(_get(env, "MODEL_DIR")),
            redis_url=redis_url,
            rq_queue=_get(env, "RQ_QUEUE") or "ncalr",
            basic_auth_user=user,
            basic_auth_pass=pw,
            webhook_secret=secret,
            legacy_webhook_secret=legacy,
            train_trigger_fraction=_float(env, "TRAIN_TRIGGER_FRACTION", 0.02, 0.0, 1.0),
            train_trigger_min=_int(env, "TRAIN_TRIGGER_MIN", 10, 1),
            image_size=_int(env, "IMAGE_SIZE", _int(env, "NCALR_IMAGE_SIZE", 32, 8, 1024), 8, 1024),
            image_channels=channels,
            allowed_image_hosts=hosts,
            set_sampling=_bool(env, "SET_SAMPLING", True),
            prediction_chunk_size=_int(env, "PREDICTION_CHUNK_SIZE", 500, 1, 500),
            page_size=_int(env, "PAGE_SIZE", 500, 1, 1000),
            http_timeout=_float(env, "HTTP_TIMEOUT", 60.0, 1.0, 3600.0),
            download_workers=_int(env, "DOWNLOAD_WORKERS", 16, 1, 64),
            write_back_top=(None if (_get(env, "WRITE_BACK_TOP") or "auto").lower() == "auto"
                            else _int(env, "WRITE_BACK_TOP", 0, 0)),
            cycle_retry_delays=_delays(env, "CYCLE_RETRY_DELAYS", (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)),
            rq_lock_ttl=_int(env, "RQ_LOCK_TTL", 60, 4, 3600),
            keep_cycles=_int(env, "KEEP_CYCLES", 5, 2, 10000),
            keep_failed=_int(env, "KEEP_FAILED", 10, 0, 10000),
            cache_max_mb=_int(env, "CACHE_MAX_MB", 2048, 1),
            relabel_share=_float(env, "RELABEL_SHARE", 0.0, 0.0, 0.9),
            local_files_document_root=_document_root(env, "LOCAL_FILES_DOCUMENT_ROOT"),
            public_url=_public_url(_get(env, "PUBLIC_URL")),
        )

    def require_label_studio(self) -> None:
        """Raise unless the backend can reach Label Studio's API on its own."""
        missing = [n for n, v in (("LABEL_STUDIO_URL", self.label_studio_url),
                                  ("LABEL_STUDIO_API_KEY", self.label_studio_api_key)) if not v]
        if missing:
            raise SettingsError(
                f"{' and '.join(missing)} not set: the backend needs its own Label Studio URL and API key "
                "(a legacy token or a personal access token) to fetch tasks and write predictions")

    def trigger_threshold(self, num_tasks: int) -> int:
        """New annotations needed to start a cycle for a project with ``num_tasks`` tasks."""
        import math
        return max(self.train_trigger_min, math.ceil(self.train_trigger_fraction * max(num_tasks, 0)))

    def write_back_count(self, num_ranked: int, num_tasks: int) -> int:
        """How many of the ``num_ranked`` ranked tasks a cycle writes, the head of the order. Auto:
        1000, or more where the cycle trigger is larger, so that the head outlasts two cycle
        triggers of labeling (one failed cycle leaves the previous head serving); an explicit
        ``WRITE_BACK_TOP=N`` is taken as it is; 0 = every ranked task."""
        if self.write_back_top is None:
            return min(num_ranked, max(AUTO_WRITE_BACK_TOP, 2 * self.trigger_threshold(num_tasks)))
        if self.write_back_top == 0:
            return num_ranked
        return min(num_ranked, self.write_back_top)

    def public(self) -> dict:
        """Settings without secrets (for the cycle reports)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("label_studio_api_key", "basic_auth_pass", "webhook_secret", "legacy_webhook_secret"):
                v = "***" if v else None
            elif f.name == "redis_url" and v:
                v = "set"
            out[f.name] = str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v)
        return out
