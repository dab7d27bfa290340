"""A small REST client for the parts of Label Studio's API this backend uses.

Auth: ``LABEL_STUDIO_API_KEY`` is either a legacy token (sent as ``Authorization: Token <key>``)
or a personal access token, which in Label Studio >= 1.20 is a JWT *refresh* token: it is
exchanged at ``POST /api/token/refresh/`` for a short-lived access token sent as ``Bearer``; the
access token is refreshed when it expires (on a 401) and the request is retried once.

Every URL goes through one parser (``urls.parse_http_url``) and the parsed, canonical URL is what
is fetched. The API key is only ever sent to Label Studio's origin (scheme, host and port); images
elsewhere come only from ``ALLOWED_IMAGE_HOSTS`` (host and port), without the key; redirects are
followed only to allowed hosts, never with the key. See docs/security.md.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from typing import Iterator, List, Optional, Sequence
from urllib.parse import urljoin

import requests
import requests.adapters

from ncalr_backend.service.urls import (SafeURL, URLRefused, base_path, parse_host_rules, parse_http_url, redact_urls,
                                        resolve, same_url_key)

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
NO_DATE_MARGIN_S = 300  # without Label Studio's Date header, the watermark is our clock minus this
MAX_BODY_BYTES = 512 * 1024 * 1024  # an API answer (decompressed) above this is refused
BODY_DEADLINE_FACTOR = 10  # a whole answer must arrive within this x HTTP_TIMEOUT (the timeout is per read)
GET_RETRY_DELAYS = (0.5, 2.0)  # a GET that failed in a way that passes is tried twice more, after these
TRANSIENT_STATUS = (429, 502, 503, 504)


def read_body(r: requests.Response, limit: int, deadline_s: float, what: str) -> bytes:
    """The whole body of a streamed answer, at most ``limit`` bytes after decompression and within
    ``deadline_s`` in all: requests' timeout bounds each read, so a body dripped a byte at a time
    never timed out, and a gzip bomb decompressed into memory whole."""
    end = time.monotonic() + deadline_s
    data = bytearray()
    raw = getattr(r, "raw", None)
    if hasattr(raw, "read1"):  # urllib3 2: what one socket read gives (decompressed), b"" at the end;
        # iter_content would wait for a whole 64 KB block (or the end) before the deadline is looked at
        blocks = iter(lambda: raw.read1(64 * 1024, decode_content=True), b"")
    else:
        blocks = r.iter_content(64 * 1024)
    for block in blocks:
        data += block
        if len(data) > limit:
            raise LabelStudioError(f"{what}: the answer is larger than {limit // (1024 * 1024)} MB")
        if time.monotonic() > end:
            raise LabelStudioError(f"{what}: the answer took more than {deadline_s:.0f} s to arrive", None)
    return bytes(data)


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error (``status``), or not at all (``status`` None)."""

    transient = False  # worth trying the same GET again right away (LabelStudioClient.request)
    retry_after: Optional[float] = None  # seconds, from the answer's Retry-After
    permanent = False  # no answer, but one that will not change by itself (a certificate refused)

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Unreachable, overloaded or failing on its side: it may pass by itself."""
        if self.permanent:
            return False
        return self.status is None or self.status >= 500 or self.status == 429


ImageRefused = URLRefused  # an image URL the backend will not fetch; the message says why
MAX_REDIRECTS = 3
# Label Studio's media routes (1.23): MEDIA_URL /data/ (uploads /data/upload/..., Local Files
# /data/local-files/?d=...), uploads on cloud file storage (/storage-data/uploaded/?filepath=...) and
# the storage proxies (/tasks/<id>/resolve/, /projects/<id>/resolve/, and /presign/ for both)
MEDIA_PATHS = re.compile(r"^/(data/|storage-data/uploaded/|(tasks|projects)/[0-9]+/(resolve|presign)/)")


def _tls_reason(exc: BaseException) -> str:
    """The verification failure's own words ('self-signed certificate', 'Hostname mismatch, ...')."""
    m = re.search(r"certificate verify failed: ([^()'\"]+)", str(exc))
    return m.group(1).strip() if m else "certificate verify failed"


def looks_like_jwt(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and key.startswith("eyJ") and all(parts)


class LabelStudioClient:
    def __init__(self, url: str, api_key: str, timeout: float = 60.0,
                 allowed_hosts: Sequence[str] = (), session: Optional[requests.Session] = None,
                 pool_size: int = 10):
        if not url or not api_key:
            raise ValueError("Label Studio URL and API key are required")
        self.url = url.rstrip("/")
        self.origin = parse_http_url(self.url + "/").origin
        self.base_path = base_path(self.url)  # canonical, as the image paths it is compared with
        self.api_key = api_key.strip()
        self.timeout = timeout
        self.allowed = parse_host_rules(allowed_hosts)
        if session is None:  # keep-alive connections for every parallel download (requests keeps 10)
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=max(10, int(pool_size)))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.pat = looks_like_jwt(self.api_key)
        self._access: Optional[str] = None
        self._lock = threading.Lock()
        # time.monotonic() after which no image download starts and none goes on: a synchronous
        # request (/predict) sets it, so that a slow image host cannot hold its thread for
        # BODY_DEADLINE_FACTOR x timeout per image after Label Studio has stopped waiting
        self.deadline: Optional[float] = None

    # ------------------------------------------------------------------ auth
    def _refresh(self) -> str:
        # never follow a redirect: on a 307/308 requests would POST the token's body to wherever it
        # points (it drops only the Authorization header), and the refresh token is the user's login
        r = self.session.post(f"{self.url}/api/token/refresh/", json={"refresh": self.api_key},
                              timeout=self.timeout, allow_redirects=False)
        if 300 <= r.status_code < 400:
            raise LabelStudioError(
                f"POST /api/token/refresh/ -> {r.status_code}, a redirect to "
                f"{redact_urls(str(r.headers.get('Location', '?')))}: not followed (it would carry the personal "
                "access token); set LABEL_STUDIO_URL to the URL Label Studio answers at (https?)", r.status_code)
        if r.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio refused the personal access token (POST /api/token/refresh/ -> "
                f"{r.status_code}); create a new one under Account & Settings", r.status_code)
        if r.status_code != 200:  # 5xx/429 may pass (retryable); a 404 says the URL is not Label Studio's base
            raise LabelStudioError(
                f"POST /api/token/refresh/ -> {r.status_code}: is LABEL_STUDIO_URL ({self.url}) Label Studio's "
                "base URL, and does it accept personal access tokens?", r.status_code)
        try:
            access = r.json().get("access")
        except (ValueError, AttributeError):
            access = None
        if not isinstance(access, str) or not access:
            raise LabelStudioError("Label Studio's token refresh returned no access token "
                                   f"(is LABEL_STUDIO_URL {self.url} Label Studio's base URL?)", r.status_code)
        return access

    def _auth_header(self, force_refresh: bool = False) -> dict:
        if not self.pat:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if force_refresh or self._access is None:
                self._access = self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def request(self, method: str, path: str, *, ok=(200, 201, 204), stream=False, **kw) -> requests.Response:
        """A request that carries the key: ``path`` on Label Studio, or an absolute URL whose
        parsed origin is exactly Label Studio's (anything else is refused before any I/O).

        A GET that fails in a way that passes (connection refused or reset, 502/503/504, 429) is
        tried again after GET_RETRY_DELAYS (or the answer's Retry-After, up to 10 s): one proxy hiccup
        in the middle of reading 50,000 tasks used to fail the whole cycle. Other methods are sent
        once (a POST of predictions must not be doubled)."""
        delays = GET_RETRY_DELAYS if method == "GET" else ()
        for attempt in range(len(delays) + 1):
            try:
                return self._request_once(method, path, ok=ok, stream=stream, **kw)
            except LabelStudioError as exc:
                if attempt >= len(delays) or not getattr(exc, "transient", False):
                    raise
                wait = exc.retry_after if exc.retry_after is not None else delays[attempt]
                log.warning("%s %s: %s; trying again in %.1f s", method, path, exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request_once(self, method: str, path: str, *, ok=(200, 201, 204), stream=False, **kw) -> requests.Response:
        if not path.startswith("/"):
            safe = parse_http_url(path)
            if safe.origin != self.origin:
                raise URLRefused(f"refusing to send the API key to {safe.origin} (Label Studio is {self.origin})")
            url = safe.url
        else:
            url = f"{self.url}{path}"
        kw.setdefault("timeout", self.timeout)
        headers = dict(kw.pop("headers", None) or {})
        try:  # always streamed: a body the caller does not stream is read here, bounded (read_body)
            r = self.session.request(method, url, headers={**headers, **self._auth_header()},
                                     allow_redirects=False, stream=True, **kw)
            if r.status_code == 401 and self.pat:
                r.close()
                r = self.session.request(method, url, headers={**headers, **self._auth_header(True)},
                                         allow_redirects=False, stream=True, **kw)
            if not stream and isinstance(r, requests.Response):
                with r:
                    r._content = read_body(r, MAX_BODY_BYTES, BODY_DEADLINE_FACTOR * float(kw["timeout"] or 60),
                                           f"{method} {path}")
        except requests.exceptions.SSLError as exc:
            if "CERTIFICATE_VERIFY_FAILED" not in str(exc):  # a handshake cut short may pass
                err = LabelStudioError(f"{method} {path}: Label Studio not reachable (SSLError)", None)
                err.transient = True
                raise err from exc
            # a certificate this machine does not trust (self-signed, another host's, expired) stays
            # so: retrying each GET and each cycle for minutes only hid the cause
            err = LabelStudioError(
                f"{method} {path}: Label Studio's TLS certificate is not trusted ({_tls_reason(exc)}): give "
                f"LABEL_STUDIO_URL the host name the certificate is for, or point REQUESTS_CA_BUNDLE at the CA "
                "that signed it", None)
            err.permanent = True
            raise err from exc
        except requests.RequestException as exc:
            err = LabelStudioError(f"{method} {path}: Label Studio not reachable ({exc.__class__.__name__})", None)
            err.transient = isinstance(exc, (requests.ConnectionError, requests.Timeout))
            raise err from exc
        if ok and r.status_code in TRANSIENT_STATUS:
            err = LabelStudioError(f"{method} {path}: HTTP {r.status_code}", r.status_code)
            err.transient = True
            try:
                err.retry_after = min(10.0, max(0.0, float(r.headers.get("Retry-After"))))
            except (TypeError, ValueError):
                pass
            r.close()
            raise err
        if ok and r.status_code not in ok:
            body = r.text[:300] if not stream else ""
            if r.status_code == 401:
                raise LabelStudioError(
                    f"{method} {path}: 401 from Label Studio: LABEL_STUDIO_API_KEY is not accepted "
                    "(legacy tokens are off by default in Label Studio 1.23; use a personal access "
                    "token or enable legacy tokens)", 401)
            raise LabelStudioError(f"{method} {path}: HTTP {r.status_code}: {body}", r.status_code)
        return r

    def get_json(self, path: str, **kw):
        return _json(self.request("GET", path, **kw), "GET", path)

    # ------------------------------------------------------------ projects
    def get_project(self, project_id: int) -> dict:
        return self.get_json(f"/api/projects/{int(project_id)}/")

    def patch_project(self, project_id: int, data: dict) -> dict:
        return _json(self.request("PATCH", f"/api/projects/{int(project_id)}/", json=data), "PATCH", "/api/projects/")

    def list_tasks(self, project_id: int, page_size: int = 100) -> List[dict]:
        """Every task of the project with its annotations (all pages)."""
        return list(self.iter_tasks(project_id, page_size))

    def iter_tasks(self, project_id: int, page_size: int = 100, updated_since: Optional[str] = None,
                   fields: str = "all", include: Optional[str] = None) -> Iterator[dict]:
        """Every task of the project with its annotations, by id; with ``updated_since`` (an ISO
        timestamp on Label Studio's clock) only the tasks updated after it (Label Studio moves a
        task's ``updated_at`` when its annotations change).

        Pages are read by an id cursor (a Data Manager filter ``id > last id seen``, ordered by id,
        always page 1), not by page number: a task deleted or updated while the pages are read
        would shift the later pages and make a numbered read skip a task. ``include``: the
        fields Label Studio serialises (its flex-fields ``include``; nested annotation fields
        must be named too), to cut the payload of large reads."""
        after = 0
        while True:
            items = [{"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after}]
            if updated_since is not None:
                items.append({"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
                              "value": updated_since})
            query = {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]}
            params = {"project": int(project_id), "page": 1, "page_size": int(page_size), "fields": fields,
                      "query": json.dumps(query)}
            if include:
                params["include"] = include
            r = self.request("GET", "/api/tasks/", ok=(200, 404), params=params)
            if r.status_code == 404:
                return
            body = _json(r, "GET", "/api/tasks/")
            tasks = body if isinstance(body, list) else body.get("tasks") if isinstance(body, dict) else None
            if not isinstance(tasks, list):
                raise LabelStudioError("GET /api/tasks/: the answer holds no list of tasks (is LABEL_STUDIO_URL "
                                       "Label Studio's base URL?)", r.status_code)
            ids = [t.get("id") for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), int)]
            if not ids:
                return
            if min(ids) <= after or ids != sorted(ids):
                raise LabelStudioError(f"GET /api/tasks/: the id filter or the ordering by id was not applied "
                                       f"(ids {ids[:5]}... after {after}); refusing to read the project by pages")
            yield from tasks
            # not "a short page is the last": Label Studio caps page_size (TASK_API_PAGE_SIZE_MAX), so
            # a full page may be shorter than asked; only an empty page ends the read (one more GET)
            after = max(ids)

    def task_ids(self, project_id: int, page_size: int = 1000) -> List[int]:
        """The ids of every task of the project (no annotations, no data: the cheap listing)."""
        return [int(t["id"]) for t in self.iter_tasks(project_id, page_size, fields="task_only", include="id")
                if isinstance(t.get("id"), int)]

    def server_time(self) -> str:
        """Label Studio's clock now, as the next delta read's watermark (UTC, ISO 8601): its ``Date``
        header, but never later than this machine's clock (a Date in the future would make every
        later delta read skip what changed before it; an earlier watermark only re-reads a little
        more). A ``Date`` without a zone is UTC (RFC 5322's -0000). Without a usable Date header:
        this machine's clock minus ``NO_DATE_MARGIN_S``, logged (Label Studio's clock cannot be
        known, and a clock of ours that runs ahead would lose changes)."""
        from datetime import datetime, timedelta, timezone
        from email.utils import parsedate_to_datetime
        now = datetime.now(timezone.utc)
        r = self.request("GET", "/api/version", ok=None)
        try:
            t = parsedate_to_datetime(r.headers["Date"])
            t = (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t).astimezone(timezone.utc)
            t = min(t, now)
        except (KeyError, TypeError, ValueError, OverflowError):
            log.warning("Label Studio sent no usable Date header (%r): the watermark is this machine's clock "
                        "minus %d s", r.headers.get("Date"), NO_DATE_MARGIN_S)
            t = now - timedelta(seconds=NO_DATE_MARGIN_S)
        finally:
            r.close()
        return ls_datetime(t)

    def get_tasks(self, project_id: int, ids: Sequence[int], chunk: int = 100, resolve_uri: bool = True) -> List[dict]:
        """The tasks ``ids`` of the project with their data and annotations, as Label Studio has
        them now (a Data Manager selection: no per-task GET, which would make Label Studio call
        /predict for each). ``resolve_uri=False``: the data as stored (storage URIs unresolved),
        which is what may be written back."""
        out = []
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), chunk):
            part = ids[s:s + chunk]
            left = set(part)
            while left:  # Label Studio may answer fewer than asked per page (TASK_API_PAGE_SIZE_MAX)
                query = json.dumps({"selectedItems": {"all": False, "included": sorted(left)}})
                body = self.get_json("/api/tasks/", params={"project": int(project_id), "query": query,
                                                            "fields": "all", "page_size": len(left), "page": 1,
                                                            "resolve_uri": "true" if resolve_uri else "false"})
                if not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
                    # never "no tasks": the caller would take every asked-for task as deleted
                    raise LabelStudioError("GET /api/tasks/: the answer holds no list of tasks (is "
                                           "LABEL_STUDIO_URL Label Studio's base URL?)")
                got = [t for t in body["tasks"] if isinstance(t, dict) and t.get("id") in left]
                if not got:
                    break  # the rest no longer exist
                out += got
                left -= {t["id"] for t in got}
        return out

    # --------------------------------------------------------- predictions
    def import_predictions(self, project_id: int, predictions: Sequence[dict], chunk_size: int = 500,
                           on_chunk=None) -> int:
        """Bulk-create predictions in chunks; returns how many Label Studio created.

        Label Studio drops items that do not validate against the labeling config without an error,
        so the caller must compare the returned count with ``len(predictions)``.
        """
        created = 0
        for start in range(0, len(predictions), chunk_size):
            chunk = list(predictions[start:start + chunk_size])
            n = self.import_prediction_chunk(project_id, chunk)
            created += n
            if on_chunk:
                on_chunk(start, len(chunk), n)
        return created

    def import_prediction_chunk(self, project_id: int, chunk: Sequence[dict]) -> int:
        """One bulk-import request; returns Label Studio's "created" count. Keep chunks at or
        below 500: Label Studio creates a larger request in batches of 500 and an error in a later
        batch leaves the earlier ones created."""
        body = _json(self.request("POST", f"/api/projects/{int(project_id)}/import/predictions", json=list(chunk)),
                     "POST", "/api/projects/<id>/import/predictions")
        return int(body.get("created", 0)) if isinstance(body, dict) else 0

    def delete_model_version(self, project_id: int, model_version: str) -> None:
        """Delete every prediction of ``model_version`` (Label Studio resets the project's
        model_version only when it is that version)."""
        self.request("DELETE", f"/api/projects/{int(project_id)}/model-versions/",
                     json={"model_version": model_version})

    def model_versions(self, project_id: int) -> dict:
        return self.get_json(f"/api/projects/{int(project_id)}/model-versions/")

    # ---------------------------------------------------------- ML backends
    def list_ml_backends(self, project_id: int) -> list:
        return self.get_json("/api/ml/", params={"project": int(project_id)})

    def not_connected_reason(self, project_id: int, webhook_header: Optional[tuple] = None,
                             public_url: Optional[str] = None, basic_user: Optional[str] = None) -> Optional[str]:
        """None when this backend is connected to the project, else why not (for the log and /status).

        Label Studio 1.23 keeps the webhook it made for a backend after the backend is disconnected
        (ml/models.py creates it at the backend's ``url`` + ``/webhook`` when the backend is saved;
        nothing deletes it), so annotations of a project that no longer uses this backend keep
        arriving. A project with no ML backend is not connected. With ``webhook_header`` ((name,
        value): the secret this backend adds to its own webhook) neither is a project whose ML
        backends are all others': the webhooks that carry the secret name this backend's URLs, and
        none of the project's backends is at one of them while each has its own webhook (disconnected,
        and another backend connected in its place; a backend without a webhook at its address had
        its URL edited, and may be this one). Label Studio's records are compared with each other,
        never with the address a request came to (a proxy may rewrite it). When no webhook carries the
        project's key yet (just connected, or the process cannot read the key secret), any backend
        counted until 2026-12-01; now only a backend at exactly ``public_url`` when it is set (the
        operator's word for this backend's URL in Label Studio), and with ``basic_user`` (basic auth
        on) and no ``public_url`` none. With ``basic_user`` only backends with that user count at
        all. Basic auth's credentials sit on the webhook of every project that uses this backend,
        where members can read them, and a user name is no secret (found by review: a request
        authenticated with them named a project with another ML backend of its own, and its cycle
        wrote predictions there). Once a webhook carries the key the webhooks decide as above (a
        backend whose URL was edited still counts). When Label Studio will not say (403, 404), the
        answer is connected."""
        backends = _unless_refused(self.list_ml_backends, project_id)
        if not isinstance(backends, list):
            return None
        if not backends:
            return f"project {int(project_id)} has no ML backend connected in Label Studio"
        backends = [b for b in backends if isinstance(b, dict)]
        urls = [str(b.get("url") or "") for b in backends]
        others = (f"project {int(project_id)} is connected to another ML backend in Label Studio "
                  f"({', '.join(redact_urls(u.rstrip('/')) for u in urls[:3])}), not to this one")
        if basic_user:
            mine = [b for b in backends if b.get("basic_auth_user") == basic_user]
            if not mine:
                return others + " (none has this backend's basic-auth user)"
            backends, urls = mine, [str(b.get("url") or "") for b in mine]
        hooks, ours = [], set()
        if webhook_header is not None:
            name, value = webhook_header
            hooks = _unless_refused(self.list_webhooks, project_id)
            hooks = [h for h in (hooks if isinstance(hooks, list) else []) if isinstance(h, dict)]
            ours = {str(h.get("url") or "").rstrip("/") for h in hooks if isinstance(h.get("headers"), dict)
                    and hmac.compare_digest(header_value(h["headers"], name).encode(), str(value).encode())}
        if not ours:
            if public_url:
                key = same_url_key(public_url)
                if key is not None and any(same_url_key(u) == key for u in urls):
                    return None
                return others + " (none is at PUBLIC_URL, and no webhook of the project carries this backend's key)"
            if basic_user and webhook_header is None:  # found by review: a worker without the key secret took them all
                return (f"project {int(project_id)}: this process cannot read the backend's key secret, so it cannot "
                        "tell this backend's webhook from others' (cycle workers need the web process's MODEL_DIR "
                        "or the same WEBHOOK_KEY_SECRET), and with basic auth on a user name is no proof")
            if basic_user and _other_key_at(hooks, name, value, urls):
                return (f"project {int(project_id)}: the webhook of a backend with this backend's basic-auth user carries "
                        "a key this process does not compute: either it still has the value from before per-project keys (the web "
                        "process replaces it when the next webhook arrives), or this process's key secret differs "
                        "from the web process's (cycle workers need the web process's MODEL_DIR or the same "
                        "WEBHOOK_KEY_SECRET), or that backend is another deployment with the same user name")
            if basic_user:
                return (f"project {int(project_id)}: no webhook of the project carries this backend's key yet, and with "
                        "basic auth on a backend's user name is no proof (set PUBLIC_URL to this backend's URL as "
                        "entered in Label Studio, or wait for the backend to add its key to the webhook)")
            return None
        if any(webhook_url(u) in ours for u in urls):
            return None
        # Label Studio makes a backend's webhook when the backend is created, not when its URL is
        # edited (ml/models.py: ``if not created: return``): a backend without a webhook at its
        # own address may be this one, moved to a new URL, and is given the benefit of the doubt
        every = {str(h.get("url") or "").rstrip("/") for h in hooks}
        if any(webhook_url(u) not in every for u in urls):
            return None
        return others

    def list_webhooks(self, project_id: int) -> list:
        return self.get_json("/api/webhooks/", params={"project": int(project_id)})

    def patch_webhook(self, webhook_id: int, data: dict) -> dict:
        return _json(self.request("PATCH", f"/api/webhooks/{int(webhook_id)}/", json=data), "PATCH", "/api/webhooks/")

    def local_files_storages(self, project_id: int) -> List[str]:
        """The ``path`` of each Local Files (import) storage of the project."""
        body = self.get_json("/api/storages/localfiles/", params={"project": int(project_id)})
        return [s["path"] for s in body if isinstance(s, dict) and isinstance(s.get("path"), str)] \
            if isinstance(body, list) else []

    # ------------------------------------------------------------- images
    def url_policy(self) -> str:
        """What decides which image URLs are fetched, and with the key: Label Studio's origin and
        path prefix and the ``ALLOWED_IMAGE_HOSTS`` rules. Images kept under one policy need no new
        check until it changes (``snapshot.load_image_groups``)."""
        return repr((self.origin, self.base_path, sorted(repr(r) for r in self.allowed)))

    def allowed_origin(self, safe: SafeURL) -> bool:
        return any(rule.matches(safe.origin) for rule in self.allowed)

    def media_path(self, safe: SafeURL) -> bool:
        """Whether ``safe`` (on Label Studio's origin) is one of Label Studio's media routes, the only
        paths a task's image needs the key for; anything else there (its API above all: a task whose
        image is ``/api/projects/1/export`` must not make the backend call it as the admin) is fetched
        without the key. The path is the canonical one that is fetched (dot segments already removed);
        a percent-encoded '.', '/' or '\\' in it gets no key either."""
        path, base = safe.target.partition("?")[0], self.base_path
        if not path.startswith(base + "/") or re.search(r"%(2e|2f|5c)", path, re.IGNORECASE):
            return False
        return bool(MEDIA_PATHS.match(path[len(base):]))

    def resolve_image_url(self, url: str) -> tuple:
        """(SafeURL, send_auth) for a task's image reference, or raise ImageRefused."""
        if not isinstance(url, str) or not url:
            raise ImageRefused("the task has no image URL")
        safe = resolve(self.url, url, self.base_path)
        if safe.origin == self.origin:
            return safe, self.media_path(safe)
        if self.allowed_origin(safe):
            return safe, False
        raise ImageRefused(f"image origin {safe.origin} is not Label Studio's ({self.origin}) and not in "
                           "ALLOWED_IMAGE_HOSTS")

    def _within_deadline(self, seconds: float) -> float:
        """``seconds``, cut to what is left before ``self.deadline`` (LabelStudioError when nothing is)."""
        if self.deadline is None:
            return seconds
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise LabelStudioError("image download stopped: the request's time is up", None)
        return min(seconds, left)

    def download(self, url: str) -> bytes:
        """The image's bytes. The key goes only to Label Studio's origin; a redirect is followed
        (at most MAX_REDIRECTS) only to an allowed origin and without the key."""
        safe, send_auth = self.resolve_image_url(url)
        for hop in range(MAX_REDIRECTS + 1):
            # each read and the whole answer end by the deadline
            timeout = self._within_deadline(self.timeout)
            whole = self._within_deadline(BODY_DEADLINE_FACTOR * self.timeout)
            try:
                if send_auth and self.deadline is not None:  # no retry waits either
                    r = self._request_once("GET", safe.url, ok=None, stream=True, timeout=timeout)
                elif send_auth:
                    r = self.request("GET", safe.url, ok=None, stream=True)
                else:
                    r = self.session.get(safe.url, timeout=timeout, stream=True, allow_redirects=False)
            except (LabelStudioError, requests.RequestException) as exc:
                raise LabelStudioError(f"image download failed: {exc}") from exc
            with r:
                if r.status_code in (301, 302, 303, 307, 308) and r.headers.get("Location"):
                    nxt = parse_http_url(urljoin(safe.url, r.headers["Location"]))  # RFC 3986, as a browser
                    if not self.allowed_origin(nxt):
                        raise ImageRefused(f"image URL redirects to {nxt.origin}, which is not in "
                                           "ALLOWED_IMAGE_HOSTS (redirects never carry the API key)")
                    safe, send_auth = nxt, False
                    continue
                if r.status_code != 200:
                    raise LabelStudioError(f"image download failed: HTTP {r.status_code}")
                # connecting and the headers took their time too
                return read_body(r, MAX_DOWNLOAD_BYTES, self._within_deadline(whole), "image download")
        raise ImageRefused(f"image URL redirects more than {MAX_REDIRECTS} times")


def _json(r: requests.Response, method: str, path: str):
    """The answer's JSON. An answer that is not JSON (an HTML login page of a proxy in front of Label
    Studio, a LABEL_STUDIO_URL that is not Label Studio's base) is a clear error that will not pass by
    retrying, not a JSONDecodeError (an OSError, which a cycle would retry for half an hour)."""
    try:
        return r.json()
    except ValueError:
        ctype = r.headers.get("Content-Type", "?")
        raise LabelStudioError(f"{method} {path}: HTTP {r.status_code} answered with {ctype!r}, not JSON: is "
                               "LABEL_STUDIO_URL Label Studio's base URL, with no login page (a proxy) in "
                               "front of it?", r.status_code if r.status_code < 500 else None) from None


def ls_datetime(t) -> str:
    """A UTC datetime in the one form the Data Manager's Datetime filters accept (1.23:
    ``%Y-%m-%dT%H:%M:%S.%fZ``; anything else is a 500)."""
    from datetime import timezone
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unless_refused(read, project_id: int):
    """``read(project_id)``, or None when Label Studio will not say (403, 404: "cannot tell")."""
    try:
        return read(project_id)
    except LabelStudioError as exc:
        if exc.status in (403, 404):
            return None
        raise


def _other_key_at(hooks: list, name: str, value: str, urls: list) -> bool:
    """Whether a webhook at one of the backends' addresses (``urls``) carries header ``name`` with a
    value other than ``value``: a key this process does not compute (another key secret, or the
    value from before per-project keys), as opposed to no key at all."""
    at = {webhook_url(u) for u in urls}
    return any(str(h.get("url") or "").rstrip("/") in at and isinstance(h.get("headers"), dict)
               and header_value(h["headers"], name) not in ("", str(value)) for h in hooks)


def webhook_url(backend_url: str) -> str:
    """Where Label Studio puts the webhook of an ML backend at ``backend_url`` (ml/models.py:
    ``url.rstrip('/') + '/webhook'``, made when the backend is created)."""
    return str(backend_url).rstrip("/") + "/webhook"


def header_value(headers: dict, name: str) -> str:
    """A header's value from a webhook's ``headers`` dict, its name matched without regard to case
    (as HTTP does), or ''."""
    for k, v in headers.items():
        if isinstance(k, str) and k.lower() == name.lower():
            return str(v)
    return ""


def make_client(settings) -> LabelStudioClient:
    """The client for ``settings``' Label Studio (raises SettingsError when it is not configured)."""
    settings.require_label_studio()
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key,
                             timeout=settings.http_timeout, allowed_hosts=settings.allowed_image_hosts,
                             pool_size=settings.download_workers)
