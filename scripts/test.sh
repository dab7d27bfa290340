#!/usr/bin/env bash
# The one test command (README "Test" section; CI runs exactly this through .ci/run).
# Installs everything from the project's own files, then runs the whole suite:
# unit tests (engine math, fast) and integration tests (a real Label Studio 1.23.2 in its own
# virtual environment + this backend under gunicorn, over HTTP on localhost).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-sdk.txt
# Label Studio lives in its own virtual environment (its pins clash with ours); cached between runs.
export NCALR_LS_VENV=${NCALR_LS_VENV:-$HOME/.cache/ncalr-backend/label-studio-1.23.2}
if [ ! -x "$NCALR_LS_VENV/bin/label-studio" ]; then
  echo "installing label-studio==1.23.2 into $NCALR_LS_VENV (first run only, a few minutes)"
  "$PY" -m venv "$NCALR_LS_VENV"
  "$NCALR_LS_VENV/bin/python" -m pip install -q --disable-pip-version-check label-studio==1.23.2
fi
exec .venv/bin/python -m pytest tests "$@"
