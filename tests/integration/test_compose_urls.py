"""The URL the compose file tells users to enter in Label Studio gets a webhook there.

Label Studio 1.23 makes a backend's webhook at ``<url>/webhook`` when the backend is connected
(ml/models.py ``create_ml_webhook``) through ``WebhookSerializer``, whose ``url`` is a Django
``URLField``; when that refuses the URL the webhook is silently not made, and annotations never
reach the backend. Django's ``URLValidator`` refuses a host name without a dot (other than
``localhost``): the compose file's earlier ``http://backend:9090`` was such a URL. Checked here
with Label Studio's own serializer, in its own virtual environment."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("NCALR_LS_VENV", Path.home() / ".cache/ncalr-backend/label-studio-1.23.2"))

CHECK = r"""
import json, sys, os
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
django.setup()
import yaml
from webhooks.serializers import WebhookSerializer
import rest_framework.exceptions as E
out = {"aliases": {}, "valid": {}}
for path in sys.argv[1:]:
    for name, svc in (yaml.safe_load(open(path)).get("services") or {}).items():
        nets = svc.get("networks") or {}
        out["aliases"].setdefault(name, [])
        for n in (nets.values() if isinstance(nets, dict) else []):
            out["aliases"][name] += list((n or {}).get("aliases") or [])
for url in json.loads(os.environ["URLS"]):
    try:  # the field Label Studio's create_ml_webhook validates the webhook URL with
        WebhookSerializer().fields["url"].run_validation(url.rstrip("/") + "/webhook")
        out["valid"][url] = True
    except E.ValidationError:
        out["valid"][url] = False
print(json.dumps(out))
"""


def _run(urls):
    env = {**os.environ, "URLS": json.dumps(urls), "LABEL_STUDIO_BASE_DATA_DIR": "/tmp/ncalr-compose-check"}
    r = subprocess.run([str(LS_VENV / "bin" / "python"), "-c", CHECK, str(ROOT / "docker-compose.yml"),
                        str(ROOT / "docker-compose.gpu.yml")],
                       cwd=next((LS_VENV / "lib").glob("python3*/site-packages/label_studio")),
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_compose_url_gets_a_webhook_in_label_studio_and_a_dotless_one_would_not():
    compose = (ROOT / "docker-compose.yml").read_text()
    default = re.search(r"PUBLIC_URL: \$\{PUBLIC_URL:-([^}]+)\}", compose).group(1)
    header = re.search(r"Connect model, URL (\S+)", compose).group(1)
    assert header == default  # the URL users are told to enter is the backend's PUBLIC_URL
    out = _run([default, "http://backend:9090", "http://127.0.0.1:9090", "http://localhost:9090"])
    assert out["valid"] == {default: True, "http://backend:9090": False, "http://127.0.0.1:9090": True,
                            "http://localhost:9090": True}
    host = default.split("//", 1)[1].rsplit(":", 1)[0]
    assert host in out["aliases"]["backend"]  # the backend answers to that name on the compose network
