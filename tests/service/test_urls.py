"""The URL policy (service/urls.py, LabelStudioClient): the API key goes to Label Studio's origin
only, whatever the URL; a table of crafted URLs, and real local listeners that must stay untouched."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ncalr_backend.service.labelstudio import ImageRefused, LabelStudioClient, LabelStudioError
from ncalr_backend.service.settings import Settings, SettingsError
from ncalr_backend.service.urls import Origin, URLRefused, parse_host_rule, parse_http_url

KEY = "k" * 40


class Listener:
    """A local HTTP server that records every request (path and headers) and answers as told."""

    def __init__(self, answer=None):
        self.requests = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append({"path": self.path, "headers": dict(self.headers)})
                code, headers, body = (answer or (lambda path: (200, {}, b"\x89PNG fake")))(self.path)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


# URLs that must never reach the listener, with Label Studio at http://ls.example:8080 and the
# listener at 127.0.0.1:PORT (parser differentials, user info, odd hosts and schemes)
CRAFTED = [
    "http://127.0.0.1:{port}\\@ls.example:8080/x.png",   # urllib.parse and urllib3 disagree on the host
    "http://127.0.0.1:{port}\\\\@ls.example:8080/x.png",
    "http://ls.example:8080@127.0.0.1:{port}/x.png",       # user info
    "http://ls.example:8080:x@127.0.0.1:{port}/x.png",
    "http://user:pw@127.0.0.1:{port}/x.png",
    "http://127.0.0.1:{port}%2F@ls.example:8080/x.png",    # encoded characters in the authority
    "http://127.0.0.1%3A{port}/x.png",
    " http://127.0.0.1:{port}/x.png",                      # whitespace, control characters
    "http://127.0.0.1:{port}/x.png\n",
    "http://127.0.0.1:{port}/x\t.png",
    "http://127.0.0.1:{port}/\x00.png",
    "ftp://127.0.0.1:{port}/x.png",                        # schemes
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_x",
    "//127.0.0.1:{port}/x.png",
    "http://0x7f000001:{port}/x.png",                      # IPv4 forms resolvers read differently
    "http://127.1:{port}/x.png",
    "http://2130706433:{port}/x.png",
    "http://127.000.000.001:{port}/x.png",
    "http://127.0.0.1:{port}/x.png",                       # plain: not Label Studio, not allowed
    "HTTP://127.0.0.1:{port}/x.png",
    "http://[::ffff:127.0.0.1]:{port}/x.png",
    "http://ls.example:{port}/x.png",                      # Label Studio's host on another port
    "https://ls.example:8080/x.png",                       # ... or another scheme
]


@pytest.mark.parametrize("template", CRAFTED)
def test_crafted_urls_are_refused_before_any_request(listener, template):
    url = template.format(port=listener.port)
    c = LabelStudioClient("http://ls.example:8080", KEY)
    with pytest.raises(ImageRefused) as e:
        c.download(url)
    assert str(e.value)  # a reason a person can act on
    assert listener.requests == []


def test_the_key_goes_to_label_studio_origin_and_nowhere_else(listener):
    ls = f"http://127.0.0.1:{listener.port}"
    c = LabelStudioClient(ls, KEY)
    assert c.download("/data/upload/1/a.png").startswith(b"\x89PNG")
    assert c.download(f"{ls}/data/upload/1/b.png").startswith(b"\x89PNG")
    assert [r["path"] for r in listener.requests] == ["/data/upload/1/a.png", "/data/upload/1/b.png"]
    assert all(r["headers"].get("Authorization") == f"Token {KEY}" for r in listener.requests)
    # the same listener reached under another name is another origin: refused (no key, no request)
    with pytest.raises(ImageRefused):
        c.download(f"http://localhost:{listener.port}/x.png")
    # the API path refuses absolute URLs off Label Studio's origin too (defence in depth)
    with pytest.raises(URLRefused):
        c.request("GET", f"http://localhost:{listener.port}/api/projects/")
    assert len(listener.requests) == 2


def test_on_label_studio_only_its_media_routes_get_the_key(listener):
    """A task's image may name any path on Label Studio's origin; the key goes only with its media
    routes (under a sub-path too), so an image URL that is Label Studio's API (an export, the
    token page, reached by '..' as well) is fetched as an anonymous visitor, never as the admin."""
    ls = f"http://127.0.0.1:{listener.port}"
    media = ["/data/upload/1/a.png", "/data/local-files/?d=img/a.png", "/storage-data/uploaded/?filepath=upload/1/a.png",
             "/tasks/7/resolve/?fileuri=czM6Ly9i", "/projects/3/presign/?fileuri=czM6Ly9i"]
    other = ["/api/projects/1/export?exportType=JSON", "/data/upload/../../api/current-user/token",
             "/data/upload/%2e%2e/%2E%2E/api/x", "/tasks/x/resolve/", "/static/samples/a.png", "/user/account/"]
    for pre in ("", "/ls"):  # Label Studio at the root, and served under a sub-path
        c = LabelStudioClient(ls + pre, KEY)
        urls = [(ls + pre + u, u in media) for u in media + other]
        if pre:  # a media route outside Label Studio's sub-path is not Label Studio's
            urls.append((ls + "/data/upload/1/a.png", False))
            # paths as Label Studio writes them under a sub-path (its prefix in: FORCE_SCRIPT_NAME
            # + the upload's URL), and as written at the root (put under the prefix)
            urls += [("/ls/data/upload/1/c.png", True), ("/data/upload/1/b.png", True), ("/ls/api/x", False)]
        else:  # a path relative to Label Studio, as tasks hold them
            urls += [("/data/upload/1/b.png", True), ("/api/projects/", False)]
        for u, _ in urls:
            c.download(u)
        got = listener.requests[-len(urls):]
        for (u, keyed), r in zip(urls, got):
            assert (r["headers"].get("Authorization") == f"Token {KEY}") == keyed, (u, r["path"])
            assert keyed or "Authorization" not in r["headers"]
        assert got[len(media) + 1]["path"] == f"{pre}/api/current-user/token"  # '..' resolved before the check
        if pre:
            assert [r["path"] for r in got[-3:]] == ["/ls/data/upload/1/c.png", "/ls/data/upload/1/b.png", "/ls/api/x"]
    # a base path that parses to another spelling (percent-encoding) is compared canonically
    c = LabelStudioClient(ls + "/a%7eb", KEY)
    c.download("/a%7Eb/data/upload/1/d.png")
    c.download(ls + "/a%7eb/data/upload/1/e.png")
    assert all(r["headers"].get("Authorization") == f"Token {KEY}" for r in listener.requests[-2:])


def test_allowed_hosts_get_no_key_and_match_host_and_port(listener):
    c = LabelStudioClient("http://ls.example:8080", KEY, allowed_hosts=(f"127.0.0.1:{listener.port}",))
    assert c.download(f"http://127.0.0.1:{listener.port}/cdn/a.png").startswith(b"\x89PNG")
    assert "Authorization" not in listener.requests[0]["headers"]
    other = LabelStudioClient("http://ls.example:8080", KEY, allowed_hosts=("127.0.0.1",))  # port 80/443 only
    with pytest.raises(ImageRefused):
        other.download(f"http://127.0.0.1:{listener.port}/cdn/a.png")
    assert len(listener.requests) == 1


def test_a_redirect_from_label_studio_never_carries_the_key():
    target = Listener()
    ls = Listener(answer=lambda path: (302, {"Location": f"http://127.0.0.1:{target.port}/elsewhere.png"}, b""))
    try:
        c = LabelStudioClient(f"http://127.0.0.1:{ls.port}", KEY)
        with pytest.raises(ImageRefused, match="redirects to .* not in ALLOWED_IMAGE_HOSTS"):
            c.download("/data/upload/1/a.png")
        assert len(ls.requests) == 1 and target.requests == []
        # allowed: followed, without the key
        c = LabelStudioClient(f"http://127.0.0.1:{ls.port}", KEY, allowed_hosts=(f"127.0.0.1:{target.port}",))
        assert c.download("/data/upload/1/a.png").startswith(b"\x89PNG")
        assert ls.requests[-1]["headers"].get("Authorization") == f"Token {KEY}"
        assert target.requests[0]["path"] == "/elsewhere.png"
        assert "Authorization" not in target.requests[0]["headers"]
    finally:
        ls.close()
        target.close()


def test_redirect_loops_end():
    loop = Listener(answer=lambda path: (302, {"Location": "/again"}, b""))
    try:
        c = LabelStudioClient("http://ls.example:8080", KEY, allowed_hosts=(f"127.0.0.1:{loop.port}",))
        with pytest.raises(ImageRefused, match="more than"):
            c.download(f"http://127.0.0.1:{loop.port}/start")
        assert len(loop.requests) == 4
    finally:
        loop.close()


def test_errors_from_the_origin_are_reported_not_raised_as_crashes():
    gone = Listener(answer=lambda path: (404, {}, b"no"))
    try:
        c = LabelStudioClient(f"http://127.0.0.1:{gone.port}", KEY)
        with pytest.raises(LabelStudioError, match="HTTP 404"):
            c.download("/data/upload/1/a.png")
    finally:
        gone.close()


@pytest.mark.parametrize("raw, origin, target", [
    ("http://LS.Example:8080/a?b=1#frag", ("http", "ls.example", 8080), "/a?b=1"),
    ("https://ls.example./x", ("https", "ls.example", 443), "/x"),
    ("http://[::1]:9/x", ("http", "::1", 9), "/x"),
    ("http://[0:0::1]/x", ("http", "::1", 80), "/x"),
    ("http://h/a/../../b", ("http", "h", 80), "/b"),
    ("http://h/caf\u00e9.png", ("http", "h", 80), "/caf%C3%A9.png"),
    ("http://Label_Studio:8080/x", ("http", "label_studio", 8080), "/x"),  # a Docker Compose service name
])
def test_canonical_form(raw, origin, target):
    u = parse_http_url(raw)
    assert u.origin == Origin(*origin) and u.target == target
    assert parse_http_url(u.url) == u  # canonical is a fixed point


def test_host_rules_and_settings():
    assert parse_host_rule("cdn.example").matches(Origin("https", "cdn.example", 443))
    assert not parse_host_rule("cdn.example").matches(Origin("https", "cdn.example", 8443))
    assert parse_host_rule("cdn.example:8443").matches(Origin("http", "cdn.example", 8443))
    r = parse_host_rule("https://cdn.example")
    assert r.matches(Origin("https", "cdn.example", 443)) and not r.matches(Origin("http", "cdn.example", 443))
    for bad in ("cdn.example/x y", "user@cdn.example", "127.1", "http://a\\b"):
        with pytest.raises(SettingsError, match="ALLOWED_IMAGE_HOSTS"):
            Settings.from_env({"ALLOWED_IMAGE_HOSTS": bad})


def test_an_image_reference_urljoin_cannot_read_is_refused_not_an_unexpected_error():
    """Found by review, 2026-12-05: urljoin raised ValueError("Invalid IPv6 URL") for a task image
    such as 'http://[::1/x', logged as an unexpected error with a traceback (anyone who can import
    tasks or post to /predict could fill the log)."""
    from ncalr_backend.service.urls import URLRefused, resolve

    with pytest.raises(URLRefused, match="Invalid IPv6 URL"):
        resolve("http://ls.test:8080", "http://[::1/x")
