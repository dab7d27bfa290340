"""The webhook secret and its limits (service/auth.py), without Label Studio."""

from __future__ import annotations

import os
import threading
import time

import pytest
from types import SimpleNamespace

from ncalr_backend import atomic as atomic_mod  # the secret file is written by atomic.create_once
from ncalr_backend.service import auth as auth_mod
from ncalr_backend.service.auth import SECRET_HEADER, Auth, load_or_create_secret
from ncalr_backend.service.settings import Settings, SettingsError


def test_the_secret_is_made_once_owner_only_and_shared_by_concurrent_starts(tmp_path):
    got = []
    threads = [threading.Thread(target=lambda: got.append(load_or_create_secret(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got[0]) >= 40
    assert os.stat(tmp_path / "webhook_key_secret").st_mode & 0o077 == 0
    assert load_or_create_secret(tmp_path) == got[0]
    assert load_or_create_secret(tmp_path, override="from-env") == "from-env"


def test_a_first_start_that_dies_while_writing_the_secret_leaves_no_empty_file(tmp_path, monkeypatch):
    """Found by review, 2026-12-05: the file was created empty, then written; a process that died in
    between left a file that every later start refused ("is empty"). The name now appears whole."""
    real = os.fsync

    def dies(fd):
        raise KeyboardInterrupt  # the process ends here, before the value is on disk
    monkeypatch.setattr(atomic_mod.os, "fsync", dies)
    with pytest.raises(KeyboardInterrupt):
        load_or_create_secret(tmp_path)
    assert not (tmp_path / "webhook_key_secret").exists()
    monkeypatch.setattr(atomic_mod.os, "fsync", real)
    value = load_or_create_secret(tmp_path)
    assert len(value) >= 40 and (tmp_path / "webhook_key_secret").read_text().strip() == value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webhook_key_secret"]  # no temporary file left


def test_the_secret_is_made_on_a_filesystem_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(atomic_mod.os, "link", no_links)
    value = load_or_create_secret(tmp_path)
    assert (tmp_path / "webhook_key_secret").read_text().strip() == value
    assert load_or_create_secret(tmp_path) == value


def test_webhook_check_needs_the_projects_exact_key_unless_basic_auth_is_on(tmp_path):
    """Each project's webhook carries its own key, HMAC-SHA256(secret, "ncalr-webhook\\0" + id):
    the key of project 1 (readable by its members in Label Studio) does not authenticate a webhook
    about project 2, and neither does the secret itself (what every webhook carried before)."""
    import hashlib
    import hmac

    a = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path)}))
    k1 = hmac.new(a.secret.encode(), b"ncalr-webhook\0" + b"1", hashlib.sha256).hexdigest()  # textbook HMAC
    assert auth_mod.project_key(a.secret, 1) == k1 and len(k1) == 64
    assert a.webhook_ok({SECRET_HEADER: k1}, 1)
    assert not a.webhook_ok({SECRET_HEADER: k1}, 2) and not a.webhook_ok({SECRET_HEADER: k1}, None)
    assert not a.webhook_ok({SECRET_HEADER: a.secret}, 1)  # the old shared value no longer passes
    assert auth_mod.project_key(a.secret, 2) != k1 and auth_mod.project_key("another secret", 1) != k1
    for bad in ({}, {SECRET_HEADER: ""}, {SECRET_HEADER: k1 + "x"}, {SECRET_HEADER: k1[:-1]}):
        assert not a.webhook_ok(bad, 1)
    for pid in (0, -1, True, "1"):
        with pytest.raises(ValueError):
            auth_mod.project_key(a.secret, pid)
    b = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path), "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"}))
    # basic auth (checked before, on every route) is enough for Label Studio's Start training button
    # alone: its credentials sit on every using project's webhook, readable by members (found by review)
    assert b.webhook_ok({}, 1, "START_TRAINING") and b.webhook_ok({}, 1, "train")
    assert not b.webhook_ok({}, 1, "ANNOTATION_CREATED") and not b.webhook_ok({}, None, "PROJECT_UPDATED")
    assert b.webhook_ok({SECRET_HEADER: auth_mod.project_key(b.secret, 1)}, 1, "ANNOTATION_CREATED")
    assert not a.webhook_ok({}, 1, "START_TRAINING")  # without basic auth: app.py asks project_has_us
    assert b.wanted_headers(3) == {SECRET_HEADER: auth_mod.project_key(b.secret, 3), "Authorization": "Basic dTpw"}
    assert b.basic_ok(SimpleNamespace(type="basic", username="u", password="p"))
    assert not b.basic_ok(SimpleNamespace(type="basic", username="u", password="q")) and not b.basic_ok(None)


def test_the_old_shared_secret_is_never_a_key_and_is_replaced_where_found(tmp_path, monkeypatch):
    """Found by review: deriving the keys from the secret every webhook used to carry (readable by any
    project's members) would let them compute every key. The keys derive from a new secret
    (SECRET_FILE); the old one (LEGACY_SECRET_FILE) is only recognised on this project's webhooks and
    replaced by the project's key: at our address with our headers, elsewhere (our webhook after
    the backend's URL was edited) by the key alone, never with basic auth's header; another
    project's webhook and other values are left alone."""
    (tmp_path / auth_mod.LEGACY_SECRET_FILE).write_text("the-old-shared-secret-0123456789\n")
    env = {"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k",
           "PUBLIC_URL": "http://us.test:9090", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"}
    a = Auth(Settings.from_env(env))
    old = "the-old-shared-secret-0123456789"
    assert a.secret != old and (tmp_path / auth_mod.SECRET_FILE).exists()
    assert not a.key_ok({SECRET_HEADER: old}, 5) and a.key_ok({SECRET_HEADER: auth_mod.project_key(a.secret, 5)}, 5)
    patched = []

    class LS:
        def list_ml_backends(self, pid):
            return [{"url": "http://us.test:9090", "basic_auth_user": "u"}]

        def list_webhooks(self, pid):
            return [{"id": 1, "project": 5, "url": "http://us.test:9090/webhook",
                     "headers": {SECRET_HEADER: old, "Authorization": "Basic old"}},
                    {"id": 2, "project": 5, "url": "http://us-before-edit:9090/webhook", "headers": {SECRET_HEADER: old},
                     "actions": ["ANNOTATION_CREATED"]},
                    {"id": 3, "project": 6, "url": "http://elsewhere:1/webhook", "headers": {SECRET_HEADER: old}},
                    {"id": 4, "project": 5, "url": "http://other:9090/webhook", "headers": {SECRET_HEADER: "theirs"}}]

        def patch_webhook(self, hook_id, body):
            patched.append((hook_id, body))

    monkeypatch.setattr(auth_mod, "make_client", lambda settings: LS())
    assert a.ensure_webhook_headers(5, None, delays=(0,)) is True
    key = auth_mod.project_key(a.secret, 5)
    # Label Studio sets a webhook's actions to the PATCH body's list ([] when absent): each PATCH
    # sends the webhook's own actions back (found by review)
    assert patched == [(1, {"headers": {SECRET_HEADER: key, "Authorization": a.basic_header()}, "actions": []}),
                       (2, {"headers": {SECRET_HEADER: key}, "actions": ["ANNOTATION_CREATED"]})]
    # the old value copied into WEBHOOK_KEY_SECRET is refused at start (found by review)
    with pytest.raises(RuntimeError, match="NEW value"):
        Auth(Settings.from_env({**env, "WEBHOOK_KEY_SECRET": old}))
    # without the old file nothing is taken for it
    (tmp_path / auth_mod.LEGACY_SECRET_FILE).unlink()
    assert Auth(Settings.from_env(env)).legacy is None


def _auth_with_backends(tmp_path, monkeypatch, backends_of, public_url="http://backend:9090"):
    """(Auth, calls): Label Studio answers ``backends_of(project)``, each backend with its webhook
    carrying this backend's secret; ``calls`` lists the projects asked."""
    env = {"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"}
    if public_url:
        env["PUBLIC_URL"] = public_url
    a = Auth(Settings.from_env(env))
    calls = []

    class LS:
        def list_ml_backends(self, pid):
            calls.append(pid)
            return backends_of(pid)

        def list_webhooks(self, pid):
            return [{"id": i, "url": b["url"] + "/webhook", "headers": {auth_mod.SECRET_HEADER: auth_mod.project_key(a.secret, pid)}}
                    for i, b in enumerate(backends_of(pid))]

        def patch_webhook(self, hook_id, body):
            pass

    monkeypatch.setattr(auth_mod, "make_client", lambda settings: LS())
    return a, calls


def test_unauthenticated_requests_cannot_make_the_backend_hammer_label_studio(tmp_path, monkeypatch):
    a, calls = _auth_with_backends(tmp_path, monkeypatch,
                                   lambda pid: [{"url": "http://backend:9090"}] if pid == 1 else [])
    for _ in range(50):
        assert a.project_has_us(1) and not a.project_has_us(2)
    assert calls == [1, 2]  # once per project and host, then remembered
    started = []
    monkeypatch.setattr(a, "ensure_webhook_headers", lambda pid, host: started.append(pid))
    for pid in range(100):
        for _ in range(3):
            a.resync_soon(pid, "backend:9090")
    deadline = time.time() + 5
    while len(started) < auth_mod.MAX_RESYNCS and time.time() < deadline:
        time.sleep(0.01)
    assert sorted(started) == list(range(auth_mod.MAX_RESYNCS))


def test_checks_of_unauthenticated_start_training_have_a_global_budget(tmp_path, monkeypatch, caplog):
    """Varying the project id misses the cache every time (the Host header is not part of the
    answer): at most CHECK_BUDGET Label Studio calls per CHECK_WINDOW_S in all, refused beyond
    (logged once per window)."""
    a, calls = _auth_with_backends(tmp_path, monkeypatch, lambda pid: [{"url": "http://backend:9090"}])
    clock = [1000.0]
    monkeypatch.setattr(auth_mod, "time", SimpleNamespace(time=lambda: clock[0], sleep=time.sleep))
    budget = auth_mod.CHECK_BUDGET
    with caplog.at_level("WARNING", logger=auth_mod.__name__):
        oks = [a.project_has_us(pid) for pid in range(1, 1001)]
    assert len(calls) == budget and oks[:budget] == [True] * budget and not any(oks[budget:])
    assert len([r for r in caplog.records if "START_TRAINING checks" in r.getMessage()]) == 1
    assert a.project_has_us(1) and len(calls) == budget  # checked ones stay answered
    clock[0] += auth_mod.CHECK_WINDOW_S  # a new window: Label Studio is asked again
    assert a.project_has_us(900) and calls[-1] == 900 and len(calls) == budget + 1


def test_the_host_header_cannot_make_another_teams_project_ours(tmp_path, monkeypatch):
    """Found by review: an unauthenticated START_TRAINING naming project 7 with ``Host:`` set to
    the address of project 7's own ML backend (another team's service) was taken as Label Studio's
    "Start training" for this backend, and the cycle wrote predictions into that project. A second
    review found the first fix open too: without PUBLIC_URL the secret is placed by the Host header
    (or on a project's only backend), so one unauthenticated request put it on the other team's
    webhook and a "secret on the backend's webhook" test then let the next one through. Start
    training without basic auth now needs a backend of the project at exactly PUBLIC_URL, or (without
    it) one whose URL proves to be this backend."""
    other = lambda pid: [{"url": "http://other-team.test:9090"}]  # noqa: E731
    # without PUBLIC_URL: test_without_public_url_the_host_header_decides_nothing
    a, calls = _auth_with_backends(tmp_path / "b", monkeypatch, other, public_url="http://us.test:9090")
    assert not a.project_has_us(7) and calls == [7]
    a, _ = _auth_with_backends(tmp_path / "c", monkeypatch, lambda pid: [{"url": "http://US.test:9090/"}],
                               public_url="http://us.test:9090")
    assert a.project_has_us(7)


def test_public_url_is_one_backend_path_included():
    """Found by review: two backends behind one proxy differ by path; comparing host and port only
    took the other's for ours."""
    from ncalr_backend.service.auth import same_url_key

    assert same_url_key("http://proxy.test/ncalr") != same_url_key("http://proxy.test/other-team")
    assert same_url_key("http://Proxy.test:80/ncalr/") == same_url_key("http://proxy.test/ncalr")
    assert same_url_key("https://p.test") == same_url_key("https://p.test:443/")
    assert same_url_key("http://p.test") != same_url_key("https://p.test")


def test_with_public_url_the_host_header_is_not_read_at_all(tmp_path, monkeypatch):
    """PUBLIC_URL names this backend: a project's backend at that address is ours, whatever Host a
    request names and whatever webhook carries what; the secret goes to that backend's webhook only."""
    a = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test",
                                "LABEL_STUDIO_API_KEY": "k", "PUBLIC_URL": "http://Us.test:9090/"}))
    patched = []
    backends = [{"url": "http://other-team.test:9090"}, {"url": "http://us.test:9090"}]
    hooks = [{"id": 1, "url": "http://other-team.test:9090/webhook", "headers": {}},
             {"id": 2, "url": "http://us.test:9090/webhook", "headers": {}}]

    class LS:
        def list_ml_backends(self, pid):
            return backends if pid == 1 else backends[:1]

        def list_webhooks(self, pid):
            return hooks if pid == 1 else hooks[:1]

        def patch_webhook(self, hook_id, body):
            patched.append(hook_id)

    monkeypatch.setattr(auth_mod, "make_client", lambda settings: LS())
    assert a.project_has_us(1) and not a.project_has_us(2)
    assert a.ensure_webhook_headers(1, "other-team.test:9090", delays=(0,)) is True and patched == [2]
    # project 2's only backend is another team's: no fallback to "the only one" with PUBLIC_URL set
    assert a.ensure_webhook_headers(2, "other-team.test:9090", delays=(0,)) is False and patched == [2]
    with pytest.raises(SettingsError, match="PUBLIC_URL"):
        Settings.from_env({"PUBLIC_URL": "ftp://us.test"})


# ------------------------------------------------------------------ recognising our own URL (no PUBLIC_URL)
def _server(answer):
    """A real HTTP server on 127.0.0.1 (test_urls.Listener) answering GET auth.WHOAMI_PATH with
    ``answer(challenge)`` (status, headers, body); ``.requests`` lists what it was asked."""
    from urllib.parse import parse_qs, urlsplit

    from tests.service.test_urls import Listener

    def route(path):
        parts = urlsplit(path)
        if parts.path != auth_mod.WHOAMI_PATH:
            return 404, {}, b""
        return answer(parse_qs(parts.query).get("c", [""])[0])

    lst = Listener(route)
    lst.url = f"http://127.0.0.1:{lst.port}"
    return lst


def _proving(secret):
    import json

    return lambda c: (200, {"Content-Type": "application/json"},
                      json.dumps({"proof": auth_mod.whoami_proof(secret, c)}).encode())


def test_a_backend_url_is_this_backend_only_if_it_proves_the_secret(tmp_path):
    """Without PUBLIC_URL the backend asks each of a project's backend URLs (over HTTP, a fresh
    challenge each time) for the proof only the holder of its secret can give: a URL that gives it
    is this backend (a proxy in front of it too); another service, one with another secret, a
    replayed or malformed answer, a redirect, an oversized body and a closed port are not."""
    import json
    import socket

    a = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path)}))
    servers = {"us": _server(_proving(a.secret)), "other": _server(_proving("another backend's secret"))}
    seen = []

    def replay(c):  # answers with a proof it once saw, not for this challenge
        seen.append(c)
        return 200, {}, json.dumps({"proof": auth_mod.whoami_proof(a.secret, "0" * 32)}).encode()

    servers["replay"] = _server(replay)
    servers["redirect"] = _server(lambda c: (302, {"Location": servers["us"].url + auth_mod.WHOAMI_PATH + "?c=" + c}, b""))
    servers["huge"] = _server(lambda c: (200, {}, json.dumps({"proof": auth_mod.whoami_proof(a.secret, c),
                                                               "pad": "x" * 10000}).encode()))
    servers["garbage"] = _server(lambda c: (200, {}, b"\xff<html>"))
    try:
        assert a.is_this_backend(servers["us"].url) and a.is_this_backend(servers["us"].url.upper() + "/")
        assert len(servers["us"].requests) == 1  # remembered (same URL, spelt differently)
        for name in ("other", "replay", "redirect", "huge", "garbage"):
            assert not a.is_this_backend(servers[name].url), name
        assert len(servers["us"].requests) == 1  # the redirect was not followed
        assert len(seen) == 1 and len(set(seen[0])) > 1  # a random challenge, not a fixed one
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{s.getsockname()[1]}"
        assert not a.is_this_backend(closed) and not a.is_this_backend("http://bad host/")
        with pytest.raises(ValueError, match="32 lower-case hex"):
            auth_mod.whoami_proof(a.secret, "../../etc")
    finally:
        for s in servers.values():
            s.close()


def test_without_public_url_the_host_header_decides_nothing(tmp_path, monkeypatch):
    """The second half of the Host-header defect, left open until 2026-12-01: without PUBLIC_URL one
    unauthenticated request naming another team's backend in ``Host`` put our secret on that
    team's webhook (and a project's only backend was taken as ours). Now the secret goes only to
    the webhook of a backend whose URL proves to be this backend, and Start training works without
    PUBLIC_URL for exactly such a project."""
    a = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test",
                                "LABEL_STUDIO_API_KEY": "k"}))
    us, other = _server(_proving(a.secret)), _server(_proving("another backend's secret"))
    other_host = other.url.split("//", 1)[1]
    patched = []
    backends = {7: [{"url": other.url}], 8: [{"url": other.url}, {"url": us.url + "/"}]}

    class LS:
        def list_ml_backends(self, pid):
            return backends.get(pid, [])

        def list_webhooks(self, pid):
            return [{"id": 10 * pid + i, "url": b["url"].rstrip("/") + "/webhook", "headers": {}}
                    for i, b in enumerate(backends.get(pid, []))]

        def patch_webhook(self, hook_id, body):
            patched.append(hook_id)

    monkeypatch.setattr(auth_mod, "make_client", lambda settings: LS())
    try:
        # project 7: the other team's backend is the only one, and the request names it in Host
        assert a.ensure_webhook_headers(7, other_host, delays=(0,)) is False and patched == []
        assert not a.project_has_us(7)
        # project 8 has us too: only our webhook gets the secret, whatever Host says
        assert a.ensure_webhook_headers(8, other_host, delays=(0,)) is True and patched == [81]
        assert a.project_has_us(8)  # (the Host header is no parameter of the check)
    finally:
        us.close(), other.close()


@pytest.mark.parametrize("public_url", [None, "http://us.test:9090"])
def test_a_webhook_carrying_our_header_elsewhere_never_gets_the_secret(tmp_path, monkeypatch, public_url):
    """Found by review: every webhook carrying the header X-NCALR-Webhook-Secret (any value) was
    "renewed" with the real secret, whatever its URL; anyone who may edit a project's webhooks could
    add one at their own URL with the header set to anything, and one unauthenticated request made
    the backend send them the secret. Only webhooks at this backend's own addresses get it now."""
    env = {"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"}
    if public_url:
        env["PUBLIC_URL"] = public_url
    a = Auth(Settings.from_env(env))
    us = _server(_proving(a.secret))
    ours = public_url or us.url
    patched = []

    class LS:
        def list_ml_backends(self, pid):
            return [{"url": ours}]

        def list_webhooks(self, pid):
            return [{"id": 99, "url": "http://evil.test/collect", "headers": {SECRET_HEADER: "x"}},
                    {"id": 1, "url": ours + "/webhook", "headers": {SECRET_HEADER: "old"}}]

        def patch_webhook(self, hook_id, body):
            patched.append((hook_id, body["headers"][SECRET_HEADER]))

    monkeypatch.setattr(auth_mod, "make_client", lambda settings: LS())
    try:
        assert a.ensure_webhook_headers(9, None, delays=(0,)) is True
        assert patched == [(1, auth_mod.project_key(a.secret, 9))]  # ours renewed; the one at evil.test untouched
    finally:
        us.close()


def test_a_probe_never_asks_a_query_of_someone_elses_choosing_nor_a_proxy(tmp_path, monkeypatch):
    """Found by review: the probe URL was the backend URL + the whoami path as a string, so a
    backend URL ending in '?x=' made the backend GET any query; and requests' proxy variables
    sent the probe to the proxy. Now a URL with a query or fragment is not probed, the probe is
    built from the parsed origin and path, and no proxy from the environment is used."""
    a = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path)}))
    us = _server(_proving(a.secret))
    try:
        for odd in (us.url + "/admin/purge?confirm=yes&x=", us.url + "/#", us.url + "?"):
            assert not a.is_this_backend(odd)
        assert len(us.requests) == 0
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy nobody runs
        monkeypatch.setenv("NO_PROXY", "")
        assert a.is_this_backend(us.url + "/") and len(us.requests) == 1
    finally:
        us.close()


def test_a_probe_that_times_out_is_not_remembered_and_one_check_per_project_runs(tmp_path, monkeypatch):
    """Found by review: a busy backend (every request thread taken) timed out probing itself and
    that "no" was kept 30 s; and concurrent presses for one project each ran the whole check.
    Timeouts are not kept now, and a press for a project whose check is running is refused."""
    a = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test",
                                "LABEL_STUDIO_API_KEY": "k"}))
    slow = threading.Event()

    def answer(c):
        slow.wait(10)
        return _proving(a.secret)(c)

    us = _server(answer)
    monkeypatch.setattr(auth_mod, "WHOAMI_TIMEOUT_S", 0.5)
    try:
        assert not a.is_this_backend(us.url)  # too slow: not us, but not remembered either
        slow.set()
        assert a.is_this_backend(us.url) and len(us.requests) == 2
        slow.clear()
        started, calls = threading.Event(), []

        class LS:
            def list_ml_backends(self, pid):
                calls.append(pid)
                started.set()
                slow.wait(10)
                return [{"url": us.url}]

        monkeypatch.setattr(auth_mod, "make_client", lambda settings: LS())
        first = []
        t = threading.Thread(target=lambda: first.append(a.project_has_us(5)))
        t.start()
        assert started.wait(5)
        assert a.project_has_us(5) is False  # the same project's check is running: refused
        slow.set()
        t.join(10)
        assert first == [True] and calls == [5] and a.project_has_us(5)
    finally:
        slow.set()
        us.close()


def test_a_backend_that_never_answers_neither_hides_ours_nor_holds_the_request(tmp_path, monkeypatch):
    """Found by review: probes ran one after another under one deadline, so a backend that accepts
    connections and never answers, listed before ours, used up the time on every check and ours
    was never recognised. Probes run side by side now, and the check returns within the timeout."""
    import socket

    a = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test",
                                "LABEL_STUDIO_API_KEY": "k"}))
    monkeypatch.setattr(auth_mod, "WHOAMI_TIMEOUT_S", 1.0)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(16)  # accepts (the kernel does), never answers
    us = _server(_proving(a.secret))
    backends = [{"url": f"http://127.0.0.1:{dead.getsockname()[1]}"}, {"url": us.url}]

    class LS:
        def list_ml_backends(self, pid):
            return backends

    monkeypatch.setattr(auth_mod, "make_client", lambda settings: LS())
    try:
        for _ in range(2):
            t0 = time.monotonic()
            assert a._our_backends(LS(), 3, None) == [backends[1]]
            assert time.monotonic() - t0 < 2.5
        assert a.project_has_us(3)
    finally:
        us.close(), dead.close()


def test_made_up_project_ids_cannot_spend_the_checks_of_a_project_this_backend_serves(tmp_path, monkeypatch):
    """Found by review: the global budget was spent by anyone: 20 START_TRAININGs naming made-up
    projects, without a key, and a real press of "Start training" in a served project was refused
    without asking Label Studio, again every window. A project with files here has its own check."""
    a, calls = _auth_with_backends(tmp_path, monkeypatch, lambda pid: [{"url": "http://backend:9090"}])
    clock = [1000.0]
    monkeypatch.setattr(auth_mod, "time", SimpleNamespace(time=lambda: clock[0], sleep=time.sleep))
    (tmp_path / "projects" / "5").mkdir(parents=True)  # served before: it has files
    oks = [a.project_has_us(pid) for pid in range(10_000, 10_000 + auth_mod.CHECK_BUDGET + 5)]
    assert not any(oks[auth_mod.CHECK_BUDGET:])  # the budget is spent on made-up ids
    assert a.project_has_us(5) and calls[-1] == 5
    assert not a.project_has_us(6)  # a project without files here still waits for the next window
