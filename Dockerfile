# The NCAL-R Label Studio ML backend. The same image serves the web app (gunicorn) and, with
# REDIS_URL set, the cycle workers (`rq worker`); torch from requirements.txt is the CUDA build, so
# a worker started with a GPU (docker run --gpus all / compose `devices`) trains on it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_DIR=/data/model_dir PORT=9090 THREADS=8
WORKDIR /app

COPY requirements.txt requirements-sdk.txt constraints.txt ./
RUN pip install -c constraints.txt -r requirements.txt \
 && pip install --no-deps -r requirements-sdk.txt

COPY model.py _wsgi.py ./
COPY ncalr_backend ./ncalr_backend

RUN useradd --create-home --uid 10001 app && mkdir -p /data && chown app /data
USER app
VOLUME /data
EXPOSE 9090

# /health over 127.0.0.1 with the container's own settings (basic auth included); `docker inspect`
# shows the reason when it fails. The rq worker (same image, no HTTP) turns it off in compose.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "-m", "ncalr_backend.service.healthcheck"]

# ONE worker process: the embedded scheduler (no REDIS_URL) must be the only one; threads serve
# /predict and /webhook concurrently.
CMD ["sh", "-c", "exec gunicorn --workers 1 --threads ${THREADS} --timeout 120 --bind 0.0.0.0:${PORT} _wsgi:app"]
