#!/usr/bin/env bash
# Installs the backend's environment (.venv) from the project's own pinned files and, unless
# SKIP_LABEL_STUDIO=1, Label Studio 1.23.2 into its own virtual environment (cached between runs).
# Sourced by scripts/test.sh and scripts/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "ncalr-backend needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1 || echo missing): set PYTHON=python3.11 (or newer)" >&2
    exit 2
  fi
  rm -rf .venv   # none yet, or one a failed venv left without pip
  "$PY" -m venv .venv || { echo "'$PY -m venv' failed: install its venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 2; }
fi
# constraints.txt pins every transitive package to the tested version (scripts/lock.sh makes it)
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt -r requirements-dev.txt
# label-studio-ml's own 2021 pins (Flask 1.1 / Werkzeug 2.0, known CVEs) are not installed: --no-deps.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-sdk.txt
export NCALR_LS_VENV=${NCALR_LS_VENV:-$HOME/.cache/ncalr-backend/label-studio-1.23.2}
# redis-server for the scale-out (REDIS_URL + rq worker) integration test; Debian package.
if [ "${NCALR_NEED_REDIS:-0}" = "1" ] && ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server (apt-get; first run only)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
  else
    echo "redis-server is missing: install it (e.g. apt-get install redis-server) for the RQ test" >&2
  fi
fi
# Debian's chromium + chromium-driver for the dashboard's browser test (tests/integration/test_dashboard.py);
# Selenium (requirements-dev.txt) drives /usr/bin/chromedriver and never downloads a browser.
if [ "${NCALR_NEED_BROWSER:-0}" = "1" ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium + chromium-driver (apt-get; first run only)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
  else
    echo "chromium / chromedriver missing: install them (apt-get install chromium chromium-driver) for the browser test" >&2
  fi
fi
if [ "${SKIP_LABEL_STUDIO:-0}" != "1" ] && [ ! -x "$NCALR_LS_VENV/bin/label-studio" ]; then
  echo "installing label-studio==1.23.2 into $NCALR_LS_VENV (first run only, a few minutes)"
  "$PY" -m venv "$NCALR_LS_VENV"
  "$NCALR_LS_VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints-labelstudio.txt label-studio==1.23.2
fi
