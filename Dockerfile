# Web tier: the API, the dashboard, /metrics, /readyz. No torch, no diffusers
# (requirements/base.txt), so the image is small and starts in seconds.
# Build: docker build -t imagegen-web .      Run: see docker-compose.yml and docs/deploy.md.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 PORT=8000 LOG_FORMAT=json PROMETHEUS_MULTIPROC_DIR=/run/prometheus

WORKDIR /app
COPY requirements/base.txt requirements/base.txt
RUN pip install -r requirements/base.txt

COPY manage.py pyproject.toml ./
COPY platform platform
COPY core core
COPY accounts accounts
COPY billing billing
COPY images images
COPY dashboard dashboard
COPY tools tools

# Nothing is written to the image's disk in production (images go to the object store);
# the multiprocess metrics folder is per container and emptied by `serve` at start.
RUN useradd --system --uid 10001 --home-dir /app app && mkdir -p /run/prometheus /app/var \
    && chown app /run/prometheus /app/var
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
# WEB_CONCURRENCY gunicorn processes x WEB_THREADS threads (images/management/commands/serve.py).
CMD ["python", "manage.py", "serve"]
