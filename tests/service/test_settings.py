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
