# The Nexus-AI Platform API as a container image: `nexus-ai serve` on port 8000 (or a build
# worker, `nexus-ai worker`, on 8001), as a non-root user, settings from the environment (see
# the README's Configuration table).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric id, so Kubernetes' runAsNonRoot can check it (deploy/kubernetes).
RUN groupadd --system --gid 10001 nexus \
    && useradd --system --uid 10001 --gid nexus --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin nexus

WORKDIR /app
# pyproject.toml names README.md as the package's readme: the build needs it.
COPY pyproject.toml README.md ./
COPY api ./api
RUN pip install . \
    && mkdir -p /app/data /app/logs \
    && chown nexus:nexus /app/data /app/logs

# In a container the log lines go to standard output too; the files stay in /app/logs.
ENV ENVIRONMENT=production \
    LOG_STDOUT=true \
    LOG_DIR=/app/logs \
    DATA_DIR=/app/data \
    API_HOST=0.0.0.0 \
    API_PORT=8000

USER 10001:10001
VOLUME ["/app/data"]
# 8000: the API (`nexus-ai serve`, the default command). 8001 (WORKER_PORT): the probes and
# /metrics of a build worker, which the same image runs in place of the API:
#   docker run IMAGE nexus-ai worker
# (the API containers then need RUN_BUILDS=false, and a store the worker shares: DynamoDB, or
# SQLite in the same volume on the same host). Leave PROMETHEUS_MULTIPROC_DIR unset for a
# worker: it is one process and refuses to start with it.
EXPOSE 8000
EXPOSE 8001

# No curl in the slim image: Python asks /health/live, which does no I/O. urlopen raises on
# any status other than 2xx and on timeouts, which exits non-zero. A container whose command
# (process 1's, or that of the init process it runs under) is `nexus-ai worker` is asked on
# WORKER_PORT instead of API_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; worker = b'worker' in open('/proc/1/cmdline', 'rb').read().split(b'\\0'); port = os.environ.get('WORKER_PORT', '8001') if worker else os.environ.get('API_PORT', '8000'); urllib.request.urlopen('http://127.0.0.1:' + port + '/health/live', timeout=4)"]

# SIGTERM (the default stop signal) starts a graceful shutdown of up to 30 s: give the
# container a stop timeout above that (Docker's default is 10 s).
CMD ["nexus-ai", "serve"]
