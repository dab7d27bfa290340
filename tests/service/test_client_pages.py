"""Task reads when Label Studio caps the page size (found by review, 2026-11-30).

Label Studio 1.23.2 cuts every task listing to ``TASK_API_PAGE_SIZE_MAX`` tasks when that variable
is set (``core/utils/common.py:174``, ``data_manager/api.py:245``), whatever page_size asks. The
client used to take a short page for the last one: with a cap below PAGE_SIZE a cycle trained on
the first page only, and ``get_tasks`` called the unanswered tasks deleted. The session below
answers the two query forms the client sends (an id cursor, and a selection of ids) the way
Label Studio does, with that cap; the integration suite reads the real Label Studio uncapped."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from ncalr_backend.service.labelstudio import LabelStudioClient

CAP = 3


class Capped:
    def __init__(self, ids):
        self.ids = sorted(ids)
        self.calls = 0

    def request(self, method, url, headers=None, params=None, **kw):
        self.calls += 1
        assert method == "GET" and url.endswith("/api/tasks/")
        query = json.loads(params["query"])
        rows = self.ids
        for f in (query.get("filters") or {}).get("items", []):
            if f["filter"] == "filter:tasks:id" and f["operator"] == "greater":
                rows = [i for i in rows if i > f["value"]]
        sel = query.get("selectedItems")
        if sel is not None and not sel["all"]:
            rows = [i for i in rows if i in set(sel["included"])]
        size = min(int(params["page_size"]), CAP)
        page = rows[(int(params["page"]) - 1) * size:int(params["page"]) * size]
        body = {"tasks": [{"id": i, "data": {}, "annotations": []} for i in page], "total": len(rows)}

        class R:
            status_code = 200
            text = ""

            def json(self):
                return body

            def close(self):
                pass
        return R()


def test_every_task_is_read_when_label_studio_caps_the_page_size():
    ids = list(range(1, 11)) + [40, 41]
    session = Capped(ids)
    c = LabelStudioClient("http://ls.test", "k", session=session)
    assert [t["id"] for t in c.iter_tasks(1, page_size=500)] == ids  # 4 capped pages + the empty one
    assert c.task_ids(1) == ids
    got = c.get_tasks(1, [41, 2, 3, 4, 5, 6, 99, 7], chunk=100)
    assert sorted(t["id"] for t in got) == [2, 3, 4, 5, 6, 7, 41]  # 99 does not exist: only it is missing


def test_a_refused_personal_access_token_is_not_retried_and_a_wrong_url_says_so():
    """Found by review: the refresh error carried no status, so a revoked token was retried for 33
    minutes as if Label Studio were down; a 404 (a URL that is not Label Studio's base) blamed the token."""
    from types import SimpleNamespace

    from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2ln"

    class Refresh:
        def __init__(self, status):
            self.status = status

        def post(self, url, json=None, timeout=None, allow_redirects=True):
            assert allow_redirects is False  # a redirect would carry the token in the body
            return SimpleNamespace(status_code=self.status, json=lambda: {}, headers={"Location": "https://x/"})

    for status, retry, says in ((401, False, "refused the personal access token"), (404, False, "base URL"),
                                (503, True, "base URL")):
        c = LabelStudioClient("http://ls.test", jwt, session=Refresh(status))
        assert c.pat
        with pytest.raises(LabelStudioError, match=says) as e:
            c._auth_header()
        assert e.value.status == status and e.value.retryable is retry



def test_the_personal_access_token_never_follows_a_redirect_to_another_host():
    """Found by review: requests re-POSTed {"refresh": <token>} to wherever a 307/308 pointed (it
    drops only the Authorization header). Against a real local HTTP server pair."""
    import http.server
    import threading

    from ncalr_backend.service.demo import free_port
    from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError

    got = []

    class Thief(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"access": "x"}')

        def log_message(self, *a):
            pass

    thief = http.server.HTTPServer(("127.0.0.1", free_port()), Thief)

    class Redirector(Thief):
        def do_POST(self):
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{thief.server_port}/api/token/refresh/?sig=secret")
            self.end_headers()

    ls = http.server.HTTPServer(("127.0.0.1", free_port()), Redirector)
    for srv in (thief, ls):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.SECRETSIG"
        c = LabelStudioClient(f"http://127.0.0.1:{ls.server_port}", jwt)
        with pytest.raises(LabelStudioError, match="redirect") as e:
            c._auth_header()
        assert got == [] and not e.value.retryable and "secret" not in str(e.value)
    finally:
        ls.shutdown()
        thief.shutdown()


def test_answers_that_are_not_label_studios_are_clear_errors_never_no_tasks():
    """Found by review: an HTML login page with 200 was a JSONDecodeError (an OSError: retried for half
    an hour); a dict without "tasks" read as "no tasks", so get_tasks called every asked-for task
    deleted and a full read emptied the mirror."""
    from types import SimpleNamespace

    from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError
    from ncalr_backend.service.mirror import TaskMirror

    class Odd:
        def __init__(self, body, ctype="application/json"):
            self.body, self.ctype = body, ctype

        def request(self, method, url, **kw):
            def js():
                if self.ctype != "application/json":
                    raise ValueError("Expecting value: line 1 column 1")
                return self.body
            return SimpleNamespace(status_code=200, json=js, headers={"Content-Type": self.ctype,
                                                                      "Date": "Mon, 30 Nov 2026 20:00:00 GMT"},
                                   text="", close=lambda: None)

    html = LabelStudioClient("http://ls.test", "k", session=Odd(None, "text/html"))
    with pytest.raises(LabelStudioError, match="not JSON") as e:
        html.get_project(1)
    assert not e.value.retryable
    for body in ({"detail": "x"}, ["x"], {"tasks": "x"}):
        c = LabelStudioClient("http://ls.test", "k", session=Odd(body))
        with pytest.raises(LabelStudioError, match="no list of tasks"):
            c.get_tasks(1, [5, 6])
    c = LabelStudioClient("http://ls.test", "k", session=Odd({"tasks": []}))
    with pytest.raises(LabelStudioError, match="Label Studio counts 7"):
        TaskMirror(Path(tempfile.mkdtemp())).sync(c, 1, 7)


def test_the_watermark_is_never_ahead_of_this_machines_clock_and_a_zoneless_date_is_utc():
    """Found by review: a Date header in the future became the watermark, and every later delta read
    skipped what changed before it; '-0000' was read as local time."""
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime
    from types import SimpleNamespace

    from ncalr_backend.service.labelstudio import NO_DATE_MARGIN_S, LabelStudioClient

    def client(date):
        headers = {} if date is None else {"Date": date}
        s = SimpleNamespace(request=lambda *a, **k: SimpleNamespace(status_code=200, headers=headers,
                                                                    close=lambda: None))
        return LabelStudioClient("http://ls.test", "k", session=s)

    def parse(stamp):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    now = datetime.now(timezone.utc)
    assert parse(client("Mon, 01 Jan 2100 00:00:00 GMT").server_time()) <= datetime.now(timezone.utc)
    past = now - timedelta(minutes=7)
    assert abs(parse(client(format_datetime(past, usegmt=True)).server_time()) - past) < timedelta(seconds=1.5)
    zoneless = (now - timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    assert abs(parse(client(zoneless).server_time()) - (now - timedelta(hours=1))) < timedelta(seconds=1.5)
    assert parse(client(None).server_time()) <= now - timedelta(seconds=NO_DATE_MARGIN_S - 1)


def test_an_answer_dripped_a_byte_at_a_time_ends_at_the_deadline_and_a_bomb_at_the_cap(monkeypatch):
    """Found by review: requests' timeout bounds each read, so a body dripped a byte at a time never
    timed out (and blocked the cycle thread); a gzip body was decompressed into memory whole."""
    import gzip
    import http.server
    import threading
    import time

    from ncalr_backend.service import labelstudio
    from ncalr_backend.service.demo import free_port
    from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError

    bomb = gzip.compress(b"[" + b"0," * 3_000_000 + b"0]")
    sent, done = [], threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if self.path.startswith("/api/projects/2/"):
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(bomb)))
                self.end_headers()
                self.wfile.write(bomb)
                return
            self.send_header("Content-Length", "200")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    sent.append(1)
                    time.sleep(0.05)
            except OSError:
                pass
            finally:
                done.set()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = LabelStudioClient(f"http://127.0.0.1:{srv.server_port}", "k", timeout=0.3)  # 3 s for a whole answer
        with pytest.raises(LabelStudioError, match="to arrive") as e:
            c.get_project(1)  # 200 bytes at 20 per second: 10 s, each read well inside 0.3 s
        assert e.value.retryable
        assert done.wait(15) and len(sent) < 200  # the client hung up mid-answer, at its deadline
        monkeypatch.setattr(labelstudio, "MAX_BODY_BYTES", 1_000_000)
        with pytest.raises(LabelStudioError, match="larger than"):
            c.get_project(2)  # 6 MB of JSON from a 10 KB gzip body
    finally:
        srv.shutdown()


def test_a_get_that_meets_a_proxy_hiccup_is_tried_again_and_a_post_never(monkeypatch):
    """Found by review: one 502 in the middle of reading 50,000 tasks failed the whole cycle. A GET
    answered 502/503/504/429 (or refused at connect) is tried twice more, after the Retry-After when
    given; a POST is sent once (predictions must not be doubled). Against a real local server."""
    import http.server
    import threading

    from ncalr_backend.service import labelstudio
    from ncalr_backend.service.demo import free_port
    from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError

    monkeypatch.setattr(labelstudio, "GET_RETRY_DELAYS", (0.05, 0.05))
    seen = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def answer(self, status, body=b"{}", headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            seen.append(("GET", self.path))
            n = sum(1 for m, p in seen if p == self.path)
            if self.path.startswith("/api/projects/1/") and n == 1:
                return self.answer(502)
            if self.path.startswith("/api/projects/2/") and n == 1:
                return self.answer(503, headers=[("Retry-After", "0")])
            if self.path.startswith("/api/projects/3/"):
                return self.answer(504)
            self.answer(200, b'{"id": 1}')

        def do_POST(self):
            seen.append(("POST", self.path))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.answer(502)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = LabelStudioClient(f"http://127.0.0.1:{srv.server_port}", "k")
        assert c.get_project(1) == {"id": 1} and c.get_project(2) == {"id": 1}
        with pytest.raises(LabelStudioError, match="504") as e:
            c.get_project(3)
        assert e.value.retryable and sum(1 for m, p in seen if p.startswith("/api/projects/3/")) == 3
        with pytest.raises(LabelStudioError, match="502"):
            c.request("POST", "/api/projects/1/import/predictions", json=[])
        assert sum(1 for m, p in seen if m == "POST") == 1
    finally:
        srv.shutdown()


def test_not_connected_reason_reads_label_studios_lists_and_cannot_tell_means_connected():
    from ncalr_backend.service.labelstudio import LabelStudioError

    class C(LabelStudioClient):
        def __init__(self, backends, hooks=()):
            self.backends, self.hooks = backends, hooks

        def list_ml_backends(self, project_id):
            if isinstance(self.backends, Exception):
                raise self.backends
            return self.backends

        def list_webhooks(self, project_id):
            if isinstance(self.hooks, Exception):
                raise self.hooks
            return list(self.hooks)

    ours = [{"id": 1, "url": "http://backend:9090/webhook/", "headers": {"X-S": "s3cret", "Other": "x"}}]
    H = ("X-S", "s3cret")
    assert "no ML backend" in C([]).not_connected_reason(1)
    assert "no ML backend" in C([], ours).not_connected_reason(1, H)
    assert C([{"id": 3, "url": "http://backend:9090"}]).not_connected_reason(1) is None
    assert C(LabelStudioError("GET /api/ml/: HTTP 403", 403)).not_connected_reason(1, H) is None
    with pytest.raises(LabelStudioError):  # Label Studio away: the cycle fails and is retried, as any read
        C(LabelStudioError("GET /api/ml/: HTTP 502", 502)).not_connected_reason(1, H)
    # ours: a backend sits where the webhook carrying our secret points (slashes aside)
    assert C([{"url": "http://backend:9090/"}], ours).not_connected_reason(1, H) is None
    assert C([{"url": "http://x:1"}, {"url": "http://backend:9090"}], ours).not_connected_reason(1, H) is None
    def own(u):  # the webhook Label Studio made when that backend was created
        return {"url": u.rstrip("/") + "/webhook", "headers": {}}

    why = C([{"url": "http://user:pw@other:9090/?token=t"}],
            ours + [own("http://user:pw@other:9090/?token=t")]).not_connected_reason(1, H)
    assert "another ML backend" in why and "other:9090" in why and "pw" not in why and "token" not in why
    assert "s3cret" not in why
    # an address differing only in port or scheme is another backend
    assert C([{"url": "http://backend:9091"}], ours + [own("http://backend:9091")]).not_connected_reason(1, H)
    assert C([{"url": "https://backend:9090"}], ours + [own("https://backend:9090")]).not_connected_reason(1, H)
    # the header's name in any case (HTTP ignores it)
    lower = [{"id": 1, "url": "http://backend:9090/webhook", "headers": {"x-s": "s3cret"}}]
    assert C([{"url": "http://other:9090"}], lower + [{"url": "http://other:9090/webhook"}]) \
        .not_connected_reason(1, H) is not None
    assert C([{"url": "http://backend:9090"}], lower).not_connected_reason(1, H) is None
    # found by review: Label Studio makes no webhook when a backend's URL is edited, so a backend
    # with no webhook at its address may be this one at a new URL: connected (was: skipped forever)
    assert C([{"url": "http://10.0.0.5:9090"}], ours).not_connected_reason(1, H) is None
    edited_and_other = ours + [{"url": "http://other:9090/webhook", "headers": {}}]
    assert C([{"url": "http://other:9090"}, {"url": "http://10.0.0.5:9090"}], edited_and_other) \
        .not_connected_reason(1, H) is None
    assert C([{"url": "http://other:9090"}], edited_and_other).not_connected_reason(1, H) is not None
    # cannot tell which webhook is ours: any backend counts
    assert C([{"url": "http://other:9090"}], ours).not_connected_reason(1, ("X-S", "s3cret2")) is None
    assert C([{"url": "http://other:9090"}], ours).not_connected_reason(1, ("X-T", "s3cret")) is None
    assert C([{"url": "http://other:9090"}], ours).not_connected_reason(1) is None
    assert C([{"url": "http://other:9090"}], [{"url": "u", "headers": None}, "junk"]).not_connected_reason(1, H) is None
    assert C([{"url": "http://other:9090"}], LabelStudioError("HTTP 403", 403)).not_connected_reason(1, H) is None
    with pytest.raises(LabelStudioError):
        C([{"url": "http://other:9090"}], LabelStudioError("HTTP 500", 500)).not_connected_reason(1, H)


def test_not_connected_reason_with_public_url_or_basic_auth_needs_a_backend_that_is_ours():
    """Found by review: with no webhook carrying this backend's key yet, any ML backend counted as
    this one. With basic auth on, its credentials sit on every using project's webhook, readable by
    members: a request authenticated with them named a project with another ML backend, and the
    cycle wrote predictions there. Now PUBLIC_URL (when set) and the basic-auth user decide."""
    class C(LabelStudioClient):
        def __init__(self, backends, hooks=()):
            self.backends, self.hooks = backends, hooks

        def list_ml_backends(self, project_id):
            return self.backends

        def list_webhooks(self, project_id):
            return list(self.hooks)

    theirs = [{"url": "http://their-model:9090", "basic_auth_user": "them"}]
    H = ("X-S", "key-of-1")
    # before: nothing marked yet, any backend counted (still so with neither setting)
    assert C(theirs).not_connected_reason(1, H) is None
    why = C(theirs).not_connected_reason(1, H, basic_user="ncalr")
    assert "another ML backend" in why and "basic-auth user" in why and "their-model" in why
    why = C(theirs).not_connected_reason(1, H, public_url="http://us:9090")
    assert "another ML backend" in why and "PUBLIC_URL" in why
    # ours by PUBLIC_URL (one parser: case, default port and trailing slash do not matter; path does)
    both = theirs + [{"url": "http://US:9090/", "basic_auth_user": "ncalr"}]
    assert C(both).not_connected_reason(1, H, public_url="http://us:9090") is None
    assert C(both).not_connected_reason(1, H, public_url="http://us:9090", basic_user="ncalr") is None
    assert C(both).not_connected_reason(1, H, public_url="http://us:9090/ncalr") is not None
    assert C(both).not_connected_reason(1, H, public_url="http://us:9090", basic_user="other") is not None
    assert C([{"url": "https://p.test"}]).not_connected_reason(1, H, public_url="https://p.test:443/") is None
    # once a webhook carries the key the webhooks decide, with PUBLIC_URL too: ours at its address
    # (even with the backend's URL edited since: tests/integration/test_trust.py), or not ours
    mine = [{"url": "http://US:9090/webhook", "headers": {"X-S": "key-of-1"}}]
    moved = [{"url": "http://moved:9090", "basic_auth_user": "ncalr"}]
    assert C(moved, mine).not_connected_reason(1, H, public_url="http://us:9090") is None
    disconnected = mine + [{"url": "http://their-model:9090/webhook", "headers": {}}]
    assert "another ML backend" in C(theirs, disconnected).not_connected_reason(1, H, public_url="http://us:9090")
    # basic auth alone: a user name is no proof; a backend with our user counts once the webhook at
    # its address carries the project's key (the old rules apply among those)
    why = C(both).not_connected_reason(1, H, basic_user="ncalr")
    assert "carries this backend's key" in why and "PUBLIC_URL" in why
    assert C(both, mine).not_connected_reason(1, H, basic_user="ncalr") is None
    assert C(theirs, mine).not_connected_reason(1, H, basic_user="ncalr") is not None  # theirs has another user
    assert "no ML backend" in C([]).not_connected_reason(1, H, public_url="http://us:9090")
    # a process that cannot read the key secret (a worker with another MODEL_DIR) cannot tell: with
    # basic auth that is a reason, not "connected" (found by review)
    assert "cannot read the backend's key secret" in C(both, mine).not_connected_reason(1, None, basic_user="ncalr")
    assert C(both, mine).not_connected_reason(1, None, public_url="http://us:9090", basic_user="ncalr") is None
    assert C(theirs, mine).not_connected_reason(1, None, public_url="http://us:9090") is not None
    # a worker whose key secret differs from the web process's computes another key: the webhook at
    # our backend's address carries a key, not this one; the reason says so (was: "carries no key
    # yet", which sent the operator to wait); another backend's keyed webhook is no such sign
    why = C(both, mine).not_connected_reason(1, ("X-S", "key-of-1-by-another-secret"), basic_user="ncalr")
    assert "does not compute" in why and "WEBHOOK_KEY_SECRET" in why and "key-of-1" not in why
    elsewhere = [{"url": "http://their-model:9090/webhook", "headers": {"X-S": "k"}}]
    assert "carries this backend's key yet" in C(both, elsewhere).not_connected_reason(1, H, basic_user="ncalr")


def test_our_webhook_header_reads_the_secret_and_never_creates_one(tmp_path):
    from ncalr_backend.service.auth import SECRET_FILE, SECRET_HEADER, load_or_create_secret, our_webhook_header
    from ncalr_backend.service.settings import Settings

    s = Settings(model_dir=tmp_path / "m")
    from ncalr_backend.service.auth import project_key

    assert our_webhook_header(s, 4) is None and not (tmp_path / "m" / SECRET_FILE).exists()
    secret = load_or_create_secret(s.model_dir)
    assert our_webhook_header(s, 4) == (SECRET_HEADER, project_key(secret, 4))  # the project's own key
    assert our_webhook_header(s, 5) != our_webhook_header(s, 4)
    assert our_webhook_header(Settings(model_dir=tmp_path / "m", webhook_secret="given"), 4) == \
        (SECRET_HEADER, project_key("given", 4))


def test_an_untrusted_tls_certificate_is_a_clear_error_that_is_not_retried(tmp_path):
    """Found by review: a certificate this machine does not trust (self-signed here) raised
    requests' SSLError, a ConnectionError, so each GET was tried three times and each cycle retried
    for minutes as if Label Studio were down. It is now one attempt and a message that says what
    to fix; the TLS server counts the handshakes."""
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from ncalr_backend.service.labelstudio import LabelStudioError

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    hellos = []

    class Server(HTTPServer):
        def get_request(self):
            sock, addr = self.socket.accept()
            hellos.append(addr)
            return ctx.wrap_socket(sock, server_side=True), addr

        def handle_error(self, request, client_address):
            pass  # the client hangs up on our certificate: expected

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = Server(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        c = LabelStudioClient(f"https://127.0.0.1:{srv.server_port}", "legacy-token-1234567890")
        with pytest.raises(LabelStudioError, match="TLS certificate is not trusted .*self.signed.*REQUESTS_CA_BUNDLE") as e:
            c.get_json("/api/projects/1/")
        assert e.value.retryable is False and e.value.transient is False
        assert len(hellos) == 1
    finally:
        srv.shutdown()
        srv.server_close()
