"""The webhook secret and its limits (service/auth.py), without Label Studio."""

from __future__ import annotations

import os
import threading
import time

import pytest
from types import SimpleNamespace

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
    assert os.stat(tmp_path / "webhook_secret").st_mode & 0o077 == 0
    assert load_or_create_secret(tmp_path) == got[0]
    assert load_or_create_secret(tmp_path, override="from-env") == "from-env"


def test_webhook_check_needs_the_exact_secret_unless_basic_auth_is_on(tmp_path):
    a = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path)}))
    assert a.webhook_ok({SECRET_HEADER: a.secret})
    for bad in ({}, {SECRET_HEADER: ""}, {SECRET_HEADER: a.secret + "x"}, {SECRET_HEADER: a.secret[:-1]}):
        assert not a.webhook_ok(bad)
    b = Auth(Settings.from_env({"MODEL_DIR": str(tmp_path), "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"}))
    assert b.webhook_ok({})  # basic auth was checked before (every route)
    assert b.wanted_headers() == {SECRET_HEADER: b.secret, "Authorization": "Basic dTpw"}
    assert b.basic_ok(SimpleNamespace(type="basic", username="u", password="p"))
    assert not b.basic_ok(SimpleNamespace(type="basic", username="u", password="q")) and not b.basic_ok(None)


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
            return [{"id": i, "url": b["url"] + "/webhook", "headers": {auth_mod.SECRET_HEADER: a.secret}}
                    for i, b in enumerate(backends_of(pid))]

        def patch_webhook(self, hook_id, body):
            pass

    monkeypatch.setattr(auth_mod, "make_client", lambda settings: LS())
    return a, calls


def test_unauthenticated_requests_cannot_make_the_backend_hammer_label_studio(tmp_path, monkeypatch):
    a, calls = _auth_with_backends(tmp_path, monkeypatch,
                                   lambda pid: [{"url": "http://backend:9090"}] if pid == 1 else [])
    for _ in range(50):
        assert a.project_has_us(1, "backend:9090") and not a.project_has_us(2, "backend:9090")
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
    """Varying the project id or the Host header misses the cache every time: at most CHECK_BUDGET
    Label Studio calls per CHECK_WINDOW_S in all, refused beyond (logged once per window)."""
    a, calls = _auth_with_backends(tmp_path, monkeypatch, lambda pid: [{"url": "http://backend:9090"}])
    clock = [1000.0]
    monkeypatch.setattr(auth_mod, "time", SimpleNamespace(time=lambda: clock[0], sleep=time.sleep))
    budget = auth_mod.CHECK_BUDGET
    with caplog.at_level("WARNING", logger=auth_mod.__name__):
        oks = [a.project_has_us(pid, "backend:9090") for pid in range(1, 501)]
        oks += [a.project_has_us(1, f"host-{i}.example") for i in range(500)]
    assert len(calls) == budget and oks[:budget] == [True] * budget and not any(oks[budget:])
    assert len([r for r in caplog.records if "START_TRAINING checks" in r.getMessage()]) == 1
    assert a.project_has_us(1, "backend:9090") and len(calls) == budget  # checked ones stay answered
    clock[0] += auth_mod.CHECK_WINDOW_S  # a new window: Label Studio is asked again
    assert a.project_has_us(900, "backend:9090") and calls[-1] == 900 and len(calls) == budget + 1


def test_the_host_header_cannot_make_another_teams_project_ours(tmp_path, monkeypatch):
    """Found by review: an unauthenticated START_TRAINING naming project 7 with ``Host:`` set to
    the address of project 7's own ML backend (another team's service) was taken as Label Studio's
    "Start training" for this backend, and the cycle wrote predictions into that project. A second
    review found the first fix open too: without PUBLIC_URL the secret is placed by the Host header
    (or on a project's only backend), so one unauthenticated request put it on the other team's
    webhook and a "secret on the backend's webhook" test then let the next one through. Start
    training without basic auth now needs PUBLIC_URL, and a backend of the project at exactly it."""
    other = lambda pid: [{"url": "http://other-team.test:9090"}]  # noqa: E731
    a, calls = _auth_with_backends(tmp_path, monkeypatch, other, public_url=None)  # our secret on its webhook
    assert a.ensure_webhook_headers(7, "other-team.test:9090", delays=(0,))  # the placement still trusts Host
    assert not a.project_has_us(7, "other-team.test:9090") and not a.project_has_us(7, None)
    a, calls = _auth_with_backends(tmp_path / "b", monkeypatch, other, public_url="http://us.test:9090")
    assert not a.project_has_us(7, "other-team.test:9090") and calls == [7]
    a, _ = _auth_with_backends(tmp_path / "c", monkeypatch, lambda pid: [{"url": "http://US.test:9090/"}],
                               public_url="http://us.test:9090")
    assert a.project_has_us(7, "whatever-the-client-says:1")


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
    assert a.project_has_us(1, "other-team.test:9090") and not a.project_has_us(2, "other-team.test:9090")
    assert a.ensure_webhook_headers(1, "other-team.test:9090", delays=(0,)) is True and patched == [2]
    # project 2's only backend is another team's: no fallback to "the only one" with PUBLIC_URL set
    assert a.ensure_webhook_headers(2, "other-team.test:9090", delays=(0,)) is False and patched == [2]
    with pytest.raises(SettingsError, match="PUBLIC_URL"):
        Settings.from_env({"PUBLIC_URL": "ftp://us.test"})
