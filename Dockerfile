# One image per role, all built from the same layers:
#   builder   compilers and a virtualenv: the dependencies, then the project installed editable
#   runtime   the slim base every service runs on: no compilers, non-root, the source at /app
#   worker    runtime + a Celery ping healthcheck (also runs beat, migrate, falsim and Flower,
#             whose compose services set their own healthchecks)
#   receiver  runtime + gunicorn on :8000 with an HTTP healthcheck on /healthz
#
# Why editable: `models/migrate.py` finds `alembic.ini` and `migrations/` next to the packages
# (`Path(models.__file__).parent.parent`). They belong to no package, so a regular install would
# put `models` in site-packages with no migrations beside it. The source tree is copied to /app
# and installed with `pip install -e`, so `models` imports from /app/models and /app holds
# alembic.ini and migrations/. The builder and the final stages use the same paths (/opt/venv,
# /app), so the editable finder written in the builder stays valid after the copy.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only here, for a dependency that ships no wheel for the build platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, read from pyproject.toml alone, so a source change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['ops']))" > /tmp/requirements.txt \
    && pip install --upgrade pip \
    && pip install -r /tmp/requirements.txt
COPY . /app
# The last check imports from / so that the working directory cannot be what supplies `models`.
RUN pip install --no-deps -e /app \
    && python -m compileall -q /app \
    && test -f /app/alembic.ini \
    && test -f /app/migrations/env.py \
    && cd / \
    && python -c "import models.migrate as m; assert str(m.ROOT) == '/app', m.ROOT"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    ARCHIVE_DIR=/data/archive
# A fixed uid/gid, so a shared archive volume (or NFS export) can be owned by the same ids on
# every machine. /data is the working directory: Celery beat keeps its schedule file there.
RUN groupadd --system --gid 10001 imagine \
    && useradd --system --uid 10001 --gid imagine --home-dir /home/imagine --create-home \
        --shell /usr/sbin/nologin imagine \
    && mkdir -p /data/archive \
    && chown -R imagine:imagine /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
WORKDIR /data
USER imagine
# A new named volume mounted here starts with this directory's owner (imagine).
VOLUME ["/data/archive"]
HEALTHCHECK NONE
CMD ["imagine", "--help"]

FROM runtime AS worker
# The worker's own node answers a Celery ping (its consumer does, even with every pool busy).
# The node is named after the container's hostname, unique per container, so the check knows it.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD celery --app worker.celery_app:celery_app inspect ping --timeout 20 \
        --destination "imagine@$HOSTNAME" || exit 1
CMD ["imagine", "worker", "--hostname", "imagine@%h"]

FROM runtime AS receiver
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=8)" || exit 1
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-tmp-dir", "/dev/shm", \
     "--access-logfile", "-", "webhook_receiver.wsgi:app"]
