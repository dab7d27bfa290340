"""A small REST client for the parts of Label Studio's API this backend uses.

Auth: ``LABEL_STUDIO_API_KEY`` is either a legacy token (sent as ``Authorization: Token <key>``)
or a personal access token, which in Label Studio >= 1.20 is a JWT *refresh* token: it is
exchanged at ``POST /api/token/refresh/`` for a short-lived access token sent as ``Bearer``; the
access token is refreshed when it expires (on a 401) and the request is retried once.

Downloads are restricted to Label Studio's own host (plus an explicit allow-list); the API key is
only ever sent to Label Studio's host.
"""

from __future__ import annotations

import logging
import threading
from typing import Iterator, List, Optional, Sequence
from urllib.parse import urljoin, urlsplit

import requests

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error (or not at all)."""


class ImageRefused(ValueError):
    """An image URL the backend will not fetch (wrong host or scheme)."""


def looks_like_jwt(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and key.startswith("eyJ") and all(parts)


def _origin(url: str):
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return p.scheme, (p.hostname or "").lower(), port


class LabelStudioClient:
    def __init__(self, url: str, api_key: str, timeout: float = 60.0,
                 allowed_hosts: Sequence[str] = (), session: Optional[requests.Session] = None):
        if not url or not api_key:
            raise ValueError("Label Studio URL and API key are required")
        self.url = url.rstrip("/")
        self.api_key = api_key.strip()
        self.timeout = timeout
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
        self.session = session or requests.Session()
        self.pat = looks_like_jwt(self.api_key)
        self._access: Optional[str] = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ auth
    def _refresh(self) -> str:
        r = self.session.post(f"{self.url}/api/token/refresh/", json={"refresh": self.api_key},
                              timeout=self.timeout)
        if r.status_code != 200:
            raise LabelStudioError(
                f"Label Studio refused the personal access token (POST /api/token/refresh/ -> "
                f"{r.status_code}); create a new one under Account & Settings")
        access = r.json().get("access")
        if not access:
            raise LabelStudioError("Label Studio's token refresh returned no access token")
        return access

    def _auth_header(self, force_refresh: bool = False) -> dict:
        if not self.pat:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if force_refresh or self._access is None:
                self._access = self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def request(self, method: str, path: str, *, ok=(200, 201, 204), stream=False, **kw) -> requests.Response:
        url = path if path.startswith("http") else f"{self.url}{path}"
        kw.setdefault("timeout", self.timeout)
        headers = dict(kw.pop("headers", None) or {})
        try:
            r = self.session.request(method, url, headers={**headers, **self._auth_header()},
                                     allow_redirects=False, stream=stream, **kw)
            if r.status_code == 401 and self.pat:
                r.close()
                r = self.session.request(method, url, headers={**headers, **self._auth_header(True)},
                                         allow_redirects=False, stream=stream, **kw)
        except requests.RequestException as exc:
            raise LabelStudioError(f"{method} {path}: Label Studio not reachable ({exc.__class__.__name__})") from exc
        if ok and r.status_code not in ok:
            body = r.text[:300] if not stream else ""
            if r.status_code == 401:
                raise LabelStudioError(
                    f"{method} {path}: 401 from Label Studio: LABEL_STUDIO_API_KEY is not accepted "
                    "(legacy tokens are off by default in Label Studio 1.23; use a personal access "
                    "token or enable legacy tokens)")
            raise LabelStudioError(f"{method} {path}: HTTP {r.status_code}: {body}")
        return r

    def get_json(self, path: str, **kw):
        return self.request("GET", path, **kw).json()

    # ------------------------------------------------------------ projects
    def get_project(self, project_id: int) -> dict:
        return self.get_json(f"/api/projects/{int(project_id)}/")

    def patch_project(self, project_id: int, data: dict) -> dict:
        return self.request("PATCH", f"/api/projects/{int(project_id)}/", json=data).json()

    def list_tasks(self, project_id: int, page_size: int = 100) -> List[dict]:
        """Every task of the project with its annotations (all pages)."""
        return list(self.iter_tasks(project_id, page_size))

    def iter_tasks(self, project_id: int, page_size: int = 100) -> Iterator[dict]:
        page, seen = 1, 0
        while True:
            r = self.request("GET", "/api/tasks/", ok=(200, 404), params={
                "project": int(project_id), "page": page, "page_size": page_size, "fields": "all"})
            if r.status_code == 404:  # past the last page
                return
            body = r.json()
            tasks = body.get("tasks", body if isinstance(body, list) else [])
            if not tasks:
                return
            yield from tasks
            seen += len(tasks)
            total = body.get("total") if isinstance(body, dict) else None
            if total is not None and seen >= total:
                return
            page += 1

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
            body = self.request("POST", f"/api/projects/{int(project_id)}/import/predictions",
                                json=chunk).json()
            n = int(body.get("created", 0)) if isinstance(body, dict) else 0
            created += n
            if on_chunk:
                on_chunk(start, len(chunk), n)
        return created

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

    def list_webhooks(self, project_id: int) -> list:
        return self.get_json("/api/webhooks/", params={"project": int(project_id)})

    def patch_webhook(self, webhook_id: int, data: dict) -> dict:
        return self.request("PATCH", f"/api/webhooks/{int(webhook_id)}/", json=data).json()

    # ------------------------------------------------------------- images
    def resolve_image_url(self, url: str) -> tuple:
        """(absolute URL, send_auth) for a task's image reference, or raise ImageRefused."""
        if not isinstance(url, str) or not url.strip():
            raise ImageRefused("the task has no image URL")
        url = url.strip()
        if url.startswith("/"):
            url = urljoin(self.url + "/", url.lstrip("/"))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ImageRefused(f"unsupported image URL scheme {parts.scheme or '(none)'!r}; "
                               "only Label Studio uploads and http(s) URLs on allowed hosts are fetched")
        if _origin(url) == _origin(self.url):
            return url, True
        if (parts.hostname or "").lower() in self.allowed_hosts:
            return url, False
        raise ImageRefused(f"image host {parts.hostname!r} is not Label Studio's host and not in "
                           "ALLOWED_IMAGE_HOSTS")

    def download(self, url: str) -> bytes:
        absolute, send_auth = self.resolve_image_url(url)
        try:
            if send_auth:
                r = self.request("GET", absolute, ok=None, stream=True)
            else:
                r = self.session.get(absolute, timeout=self.timeout, stream=True, allow_redirects=False)
        except (LabelStudioError, requests.RequestException) as exc:
            raise LabelStudioError(f"image download failed: {exc}") from exc
        with r:
            if r.status_code != 200:
                raise LabelStudioError(f"image download failed: HTTP {r.status_code}")
            data = bytearray()
            for block in r.iter_content(64 * 1024):
                data += block
                if len(data) > MAX_DOWNLOAD_BYTES:
                    raise LabelStudioError(f"image larger than {MAX_DOWNLOAD_BYTES // (1024 * 1024)} MB")
        return bytes(data)


def make_client(settings) -> LabelStudioClient:
    """The client for ``settings``' Label Studio (raises SettingsError when it is not configured)."""
    settings.require_label_studio()
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key,
                             timeout=settings.http_timeout, allowed_hosts=settings.allowed_image_hosts)
