#!/usr/bin/env bash
# The one "start it" command (README).
#  * LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY set: starts the backend under gunicorn on $PORT
#    (default 9090) for that Label Studio; connect it there (Settings > Model, or POST /api/ml).
#  * otherwise (trying it out): also starts a local Label Studio 1.23.2 with a ready demo project of
#    digit images connected to the backend, and prints the URL and the login.
# ONE gunicorn worker process (threads for concurrency): the embedded cycle scheduler lives in it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${LABEL_STUDIO_URL:-}" ]; then
  if [ -z "${LABEL_STUDIO_API_KEY:-}" ]; then
    echo "LABEL_STUDIO_URL is set but LABEL_STUDIO_API_KEY is not: the backend needs both (a legacy token or a" >&2
    echo "personal access token from Label Studio's Account & Settings). Unset LABEL_STUDIO_URL for the demo." >&2
    exit 2
  fi
  SKIP_LABEL_STUDIO=1 source scripts/install.sh
  exec .venv/bin/gunicorn --workers 1 --threads "${THREADS:-8}" --timeout 120 \
       --bind "${HOST:-0.0.0.0}:${PORT:-9090}" _wsgi:app
fi
source scripts/install.sh
export IMAGE_SIZE=${IMAGE_SIZE:-8} IMAGE_CHANNELS=${IMAGE_CHANNELS:-1}   # digits are 8x8 grayscale
exec .venv/bin/python -m ncalr_backend.service.demo "$@"
