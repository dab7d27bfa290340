"""``python -m ncalr_backend.service.healthcheck``: the container's health check (the Dockerfile's
HEALTHCHECK). Exit 0 when this machine's backend answers ``/health`` with ``{"status": "UP"}``
within 5 s; otherwise exit 1 and say why on stderr (``docker inspect`` shows it). It reads the
settings the app reads (``Settings.from_env``: ``BASIC_AUTH_USER`` / ``_PASS``), and ``PORT``
(default 9090), and asks only 127.0.0.1, never through a proxy (``http_proxy`` and the like are
ignored), so the credentials never leave the container."""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Mapping, Optional

from ncalr_backend.service.auth import basic_header
from ncalr_backend.service.settings import Settings


def check(env: Optional[Mapping[str, str]] = None, timeout: float = 5.0) -> Optional[str]:
    """None when healthy, else the reason."""
    env = os.environ if env is None else env
    port = (env.get("PORT") or "9090").strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"PORT={port!r} is not a port number"
    try:
        settings = Settings.from_env(env)
    except ValueError as exc:
        return f"the settings are refused: {exc}"
    req = urllib.request.Request(f"http://127.0.0.1:{int(port)}/health")
    if settings.basic_auth_user:  # from_env sets both or neither
        req.add_header("Authorization", basic_header(settings))
    try:
        # no proxy: urllib would send this loopback request, credentials and all, to an HTTP_PROXY
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=timeout) as resp:
            body = json.loads(resp.read(65536))
    except urllib.error.HTTPError as exc:
        return f"/health answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # refused, timed out, not JSON
        return f"/health did not answer: {exc}"
    if not isinstance(body, dict) or body.get("status") != "UP":
        return f"/health answered {str(body)[:200]}"
    return None


def main() -> int:
    reason = check()
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
