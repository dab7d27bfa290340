"""The container's health check (``python -m ncalr_backend.service.healthcheck``, the Dockerfile's
HEALTHCHECK) against the real Flask app served over HTTP on localhost, with basic auth on."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from werkzeug.serving import make_server

from ncalr_backend.service.healthcheck import check

AUTH = {"BASIC_AUTH_USER": "ops", "BASIC_AUTH_PASS": "s3cret-pass"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import label_studio_ml.api
    from model import NCALRBackend
    from ncalr_backend.service.app import create_app
    from ncalr_backend.service.settings import Settings

    importlib.reload(label_studio_ml.api)  # a fresh module-global Flask app for this file's app
    env = {"MODEL_DIR": str(tmp_path_factory.mktemp("hc")), "LABEL_STUDIO_URL": "http://ls.test",
           "LABEL_STUDIO_API_KEY": "k", **AUTH}
    server = make_server("127.0.0.1", 0, create_app(NCALRBackend, Settings.from_env(env), autostart=False),
                         threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {**env, "PORT": str(server.server_port)}
    server.shutdown()


def _free_port() -> int:
    """A port that was free a moment ago (nothing listens on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_http(body: bytes, seen=None) -> HTTPServer:
    """A started server on 127.0.0.1 answering every GET with 200 and ``body``; ``seen`` (a list)
    gets each request's (path, Authorization). The caller shuts it down."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if seen is not None:
                seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_healthy_backend_passes_with_the_apps_own_credentials(served):
    assert check(served) is None
    # the command Docker runs: exit status 0, nothing on stderr
    out = subprocess.run([sys.executable, "-m", "ncalr_backend.service.healthcheck"], env={**served, "PATH": ""},
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (0, "")


def test_wrong_credentials_are_unhealthy_and_say_so(served):
    assert check({**served, "BASIC_AUTH_PASS": "wrong-pass"}) == "/health answered HTTP 401"
    out = subprocess.run([sys.executable, "-m", "ncalr_backend.service.healthcheck"],
                         env={**served, "BASIC_AUTH_PASS": "wrong-pass", "PATH": ""},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "unhealthy: /health answered HTTP 401" in out.stderr


def test_the_check_never_goes_through_a_proxy(served, monkeypatch):
    """Found by review: urllib honoured ``http_proxy`` (Docker's client proxy settings put it into
    containers), so the loopback request, basic-auth credentials and all, went to the proxy, and a
    proxy's made-up {"status": "UP"} passed the check."""
    seen = []

    proxy = _fake_http(b'{"status": "UP"}', seen)
    try:
        for var in ("http_proxy", "HTTP_PROXY", "all_proxy"):
            monkeypatch.setenv(var, f"http://127.0.0.1:{proxy.server_port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        # nothing listens on a free port: only a proxy could make it look healthy
        assert check({**served, "PORT": str(_free_port())}).startswith("/health did not answer")
        assert check(served) is None  # the real backend, asked directly
        assert seen == []
    finally:
        proxy.shutdown()


def test_nothing_listening_is_unhealthy(served):
    assert check({**served, "PORT": str(_free_port())}).startswith("/health did not answer")


@pytest.mark.parametrize("body, why", [(b'{"status": "DOWN"}', "/health answered {'status': 'DOWN'}"),
                                       (b"<html>login</html>", "/health did not answer"),
                                       (b"[1]", "/health answered [1]")])
def test_an_answer_that_is_not_up_is_unhealthy(served, body, why):
    srv = _fake_http(body)
    try:
        assert check({**served, "PORT": str(srv.server_port)}).startswith(why)
    finally:
        srv.shutdown()


@pytest.mark.parametrize("env, why", [({"PORT": "90x"}, "PORT='90x' is not a port number"),
                                      ({"BASIC_AUTH_PASS": ""}, "the settings are refused: BASIC_AUTH_USER and")])
def test_bad_settings_are_named(served, env, why):
    assert check({**served, **env}).startswith(why)
