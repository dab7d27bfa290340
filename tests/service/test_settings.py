"""Settings from the environment: defaults and validation."""

from __future__ import annotations

import pytest

from ncalr_backend.service.settings import Settings, SettingsError


def test_settings_defaults_and_validation(tmp_path):
    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    assert s.redis_url is None and s.set_sampling and s.image_size == 32
    assert s.trigger_threshold(100) == 10 and s.trigger_threshold(5000) == 100
    for env, words in (({"LABEL_STUDIO_URL": "localhost:8080"}, "http(s) URL"),
                       ({"BASIC_AUTH_USER": "u"}, "together"),
                       ({"TRAIN_TRIGGER_FRACTION": "2"}, "TRAIN_TRIGGER_FRACTION"),
                       ({"IMAGE_CHANNELS": "2"}, "IMAGE_CHANNELS"),
                       ({"SET_SAMPLING": "maybe"}, "SET_SAMPLING"),
                       ({"REDIS_URL": "http://x"}, "REDIS_URL")):
        with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")):
            Settings.from_env(env)
    with pytest.raises(SettingsError, match="LABEL_STUDIO_API_KEY"):
        Settings.from_env({"LABEL_STUDIO_URL": "http://ls:8080"}).require_label_studio()
    pub = Settings.from_env({"LABEL_STUDIO_API_KEY": "k", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"}).public()
    assert pub["label_studio_api_key"] == "***" and pub["basic_auth_pass"] == "***"


def test_non_finite_numbers_and_urls_the_client_would_refuse_fail_at_start(tmp_path):
    """Found by review: TRAIN_TRIGGER_FRACTION=nan passed the range check (every comparison with
    NaN is false) and then every annotation webhook answered 500; LABEL_STUDIO_URL values that the
    Label Studio client's parser refuses passed the start and failed every cycle later. One
    parser (urls.parse_http_url) decides for both now."""
    base = {"MODEL_DIR": str(tmp_path)}
    for name in ("TRAIN_TRIGGER_FRACTION", "RELABEL_SHARE", "HTTP_TIMEOUT"):
        for bad in ("nan", "inf", "-inf", "NaN"):
            with pytest.raises(SettingsError, match=f"{name}=.*finite"):
                Settings.from_env({**base, name: bad})
    for bad in ("nan", "10,inf", "10,nan,30"):
        with pytest.raises(SettingsError, match="CYCLE_RETRY_DELAYS"):
            Settings.from_env({**base, "CYCLE_RETRY_DELAYS": bad})
    for bad in ("http://label studio:8080", "http://admin:pw@ls:8080", "http://ls:99999", "ftp://ls",
                "http://ls:8080\\@evil", "http://l s:8080"):
        with pytest.raises(SettingsError, match="LABEL_STUDIO_URL="):
            Settings.from_env({**base, "LABEL_STUDIO_URL": bad})
    from ncalr_backend.service.labelstudio import LabelStudioClient

    for good in ("http://localhost:8080/", "https://ls.example.com", "http://127.0.0.1:8080/ls/",
                 "http://label_studio:8080"):  # a Docker Compose service name
        s = Settings.from_env({**base, "LABEL_STUDIO_URL": good})
        assert not s.label_studio_url.endswith("/")
        assert LabelStudioClient(s.label_studio_url, "k").url == s.label_studio_url  # the client takes it as is


def test_operator_mistakes_get_a_message_that_says_what_to_fix(tmp_path):
    """Found by an operator's-eye review (2026-11-30): each of these was accepted and failed later,
    or was silently ignored."""
    base = {"MODEL_DIR": str(tmp_path)}
    for url, says in (("http://ls:8080/projects/1/data?tab=2", "query"), ("http://ls:8080/#/x", "fragment"),
                      ("http://ls:8080/api", "/api/"), ("http://ls:8080/projects/3", "/projects/")):
        with pytest.raises(SettingsError, match=says):
            Settings.from_env({**base, "LABEL_STUDIO_URL": url})
    assert Settings.from_env({**base, "LABEL_STUDIO_URL": "https://h.example/labelstudio/"}).label_studio_url == \
        "https://h.example/labelstudio"  # Label Studio served under a path of its own is fine
    for pasted in ("Token abc123", "'abc123'", '"Bearer abc123"', "  token   abc123 "):
        assert Settings.from_env({**base, "LABEL_STUDIO_API_KEY": pasted}).label_studio_api_key == "abc123"
    with pytest.raises(SettingsError, match="token alone"):
        Settings.from_env({**base, "LABEL_STUDIO_API_KEY": "abc 123"})
    with pytest.raises(SettingsError, match="':'"):
        Settings.from_env({**base, "BASIC_AUTH_USER": "a:b", "BASIC_AUTH_PASS": "p"})
    with pytest.raises(SettingsError, match="HTTP_TIMEOUT"):
        Settings.from_env({**base, "HTTP_TIMEOUT": "1e10"})  # was an OverflowError in every request
    with pytest.raises(SettingsError, match="CYCLE_RETRY_DELAYS"):
        Settings.from_env({**base, "CYCLE_RETRY_DELAYS": ","})  # was "never retry", silently


def test_a_serving_backend_refuses_to_start_without_its_label_studio_key(tmp_path):
    from model import NCALRBackend
    from ncalr_backend.service.app import create_app

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test"})
    with pytest.raises(SettingsError, match="LABEL_STUDIO_API_KEY not set"):
        create_app(NCALRBackend, s, autostart=True)


def test_engine_settings_typos_and_non_finite_values_fail_at_start():
    from ncalr_backend.engine.config import ConfigError, EngineConfig

    with pytest.raises(ConfigError, match="did you mean NCALR_MAX_EPOCHS"):
        EngineConfig.from_env(environ={"NCALR_MAX_EPOCH": "30"})
    for env, says in (({"NCALR_LR": "nan"}, "lr=nan"), ({"NCALR_OOD_MAD": "inf"}, "ood_mad=inf"),
                      ({"NCALR_MIN_EPOCHS": "100", "NCALR_MAX_EPOCHS": "10"}, "min_epochs=100 > max_epochs=10"),
                      ({"NCALR_PRETRAINED_PATH": "/no/such/weights.pt"}, "no such file"),
                      ({"NCALR_LA_TAU": "-5"}, "la_tau")):
        with pytest.raises(ConfigError, match=says):
            EngineConfig.from_env(environ=env)
    # the scripts' own NCALR_ variables and empty values are not settings, and not errors
    cfg = EngineConfig.from_env(environ={"NCALR_LS_VENV": "/x", "NCALR_NO_AUTOSTART": "1", "NCALR_NEED_REDIS": "1",
                                         "NCALR_MAX_EPOCHS": ""})
    assert cfg.max_epochs == EngineConfig().max_epochs


def test_settings_that_silently_meant_something_else_are_refused(tmp_path):
    """Found by an operator's-eye review: a path in an ALLOWED_IMAGE_HOSTS rule was dropped (the whole
    host allowed), REDIS_URL=redis:// and a one-character WEBHOOK_SECRET (now WEBHOOK_KEY_SECRET) were accepted."""
    base = {"MODEL_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match="ALLOWED_IMAGE_HOSTS"):
        Settings.from_env({**base, "ALLOWED_IMAGE_HOSTS": "https://s3.amazonaws.com/bucket"})
    assert Settings.from_env({**base, "ALLOWED_IMAGE_HOSTS": "https://s3.amazonaws.com/, cdn.example:8443"})
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({**base, "REDIS_URL": "redis://"})
    with pytest.raises(SettingsError, match="16 characters"):
        Settings.from_env({**base, "WEBHOOK_KEY_SECRET": "x"})


def test_what_a_careless_operator_sets_is_refused_at_start_with_the_fix(tmp_path):
    """Found by review: each of these passed the start-up check and failed later (a width or seed
    the network or generator cannot take: every cycle failed; retry delays past the timer's range:
    the scheduler thread died; a key with a zero-width space: every request failed), or was silently
    ignored (typos of service and engine names)."""
    from ncalr_backend.engine.config import ConfigError, EngineConfig

    for env, says in (({"NCALR_WIDTH": "2"}, "width=2: must be >= 4"), ({"NCALR_SEED": "-1"}, "seed=-1"),
                      ({"NCALR_SEED": str(2 ** 64)}, "seed="), ({"NCALR_WIDHT": "8"}, "did you mean NCALR_WIDTH"),
                      ({"NCALR_GPU": "1"}, "NCALR_GPU is not an engine setting"),
                      ({"ncalr_max_epochs": "3"}, "case-sensitive; the engine reads NCALR_MAX_EPOCHS")):
        with pytest.raises(ConfigError, match=says):
            EngineConfig.from_env(environ=env)
    EngineConfig.from_env(environ={"NCALR_LS_VENV": "/x", "NCALR_NEED_REDIS": "1", "NCALR_IT_SHOW_LOG": "1",
                                   "NCALR_WIDTH": "4"})  # the scripts' own names pass
    base = {"MODEL_DIR": str(tmp_path)}
    for env, says in (({"TRAIN_TRIGER_MIN": "3"}, "did you mean TRAIN_TRIGGER_MIN"),
                      ({"DOWNLOAD_WORKER": "2"}, "did you mean DOWNLOAD_WORKERS"),
                      ({"CYCLE_RETRY_DELAYS": "10,1e10"}, r"seconds in \[0, 86400\]"),
                      ({"LABEL_STUDIO_API_KEY": "abc123\u200b"}, "U\\+200B"),
                      ({"MODEL_DIR": str(tmp_path / "f")}, "is a file")):
        (tmp_path / "f").write_text("x")
        with pytest.raises(SettingsError, match=says):
            Settings.from_env({**base, **env})
    s = Settings.from_env({**base, "LABEL_STUDIO_API_KEY": "\u201cabc123\u201d", "HOSTNAME": "h",
                           "LABEL_STUDIO_HOST": "http://x", "REDIS_HOST": "r"})  # others' variables pass
    assert s.label_studio_api_key == "abc123"


@pytest.mark.parametrize("level, ok", [("", True), (" debug ", True), ("bogus", False), ("10", False)])
def test_log_level_is_checked_when_the_app_is_imported(level, ok):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "LOG_LEVEL": level, "NCALR_NO_AUTOSTART": "on", "MODEL_DIR": "/tmp/ncalr-loglevel-test"}
    proc = subprocess.run([sys.executable, "-c", "import _wsgi"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stderr[-2000:]
    if not ok:
        assert "LOG_LEVEL=" in proc.stderr and "expected DEBUG, INFO" in proc.stderr


def test_redis_urls_basic_auth_and_model_dirs_that_failed_later_are_refused_at_start(tmp_path):
    """Found by review, 2026-12-05, each reproduced: a named Redis database ("/ncalr2") was ignored
    by redis-py (two backends "apart" shared db 0 and its keys); an unknown query argument or a port
    that is not a number started, then every keyed request was a 500 or a bare traceback; a refused
    REDIS_URL was echoed with its password; a basic-auth password with an 'ö' never logged Label
    Studio in (it sends latin-1, the server reads UTF-8) while the health check passed; a MODEL_DIR
    that cannot be created died later in label-studio-ml without the variable's name."""
    base = {"MODEL_DIR": str(tmp_path)}
    for env, says in (({"REDIS_URL": "redis://127.0.0.1:6379/ncalr2"}, "the database is a number"),
                      ({"REDIS_URL": "redis://127.0.0.1:6379/0?foo=bar"}, "redis-py cannot use it.*'foo'"),
                      ({"REDIS_URL": "redis://127.0.0.1:notaport/0"}, "Port could not be cast"),
                      ({"REDIS_URL": "redis://127.0.0.1:6379/0?db=x"}, "Invalid value for 'db'"),
                      ({"REDIS_URL": "unix://"}, "needs the socket's path"),
                      ({"BASIC_AUTH_USER": "ncalr", "BASIC_AUTH_PASS": "Passw\u00f6rt1"}, "BASIC_AUTH_PASS: use printable ASCII"),
                      ({"BASIC_AUTH_USER": "J\u00fcrgen", "BASIC_AUTH_PASS": "p"}, "BASIC_AUTH_USER: use printable ASCII"),
                      ({"MODEL_DIR": "/proc/ncalr-model"}, "MODEL_DIR='/proc/ncalr-model' cannot be created"),
                      ({"MODEL_DIR": str(tmp_path / "f" / "m")}, "cannot be created"),
                      ({"MODEL_DIR": "~no-such-user-ncalr/m"}, "MODEL_DIR='~no-such-user-ncalr/m'")):
        (tmp_path / "f").write_text("x")
        with pytest.raises(SettingsError, match=says):
            Settings.from_env({**base, **env})
    with pytest.raises(SettingsError) as e:
        Settings.from_env({**base, "REDIS_URL": "rediss//:hunter2@redis:6379/0"})
    assert "hunter2" not in str(e.value) and "***@" in str(e.value)
    for ok in ("redis://redis:6379/0", "redis://redis:6379", "redis://:pw@redis:6379/3?socket_timeout=2",
               "rediss://redis:6380/0?ssl_cert_reqs=none", "unix:///run/redis.sock"):
        assert Settings.from_env({**base, "REDIS_URL": ok}).redis_url == ok
    made = tmp_path / "new" / "model"
    assert Settings.from_env({"MODEL_DIR": str(made), "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "pass word!"}).model_dir == made
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # probed, not made


def test_the_demos_empty_variables_are_unset_and_a_bad_port_is_said(monkeypatch, capsys):
    """Found by review, 2026-12-05: DEMO_DIR= put the demo, its admin login and token, into the
    current directory (the repository root, not ignored by git); LS_PORT= was a ValueError traceback."""
    from ncalr_backend.service import demo

    for k, v in {"DEMO_DIR": " ", "LS_PORT": "", "BACKEND_PORT": ""}.items():
        monkeypatch.setenv(k, v)
    args = demo.parse_args([])
    assert args.workdir == str(demo.ROOT / "runs" / "demo") and (args.ls_port, args.backend_port) == (8080, 9090)
    monkeypatch.setenv("LS_PORT", "80a")
    with pytest.raises(SystemExit) as e:
        demo.parse_args([])
    assert e.value.code == 2 and "LS_PORT='80a': a port number" in capsys.readouterr().err
