# task-processor image: one image for the processor, the HTTP API and the admin commands.
#
#   docker build -t task-processor .
#   podman build --format docker -t task-processor .   (the OCI format would drop HEALTHCHECK)
#   docker run --rm -e DATABASE_URL=postgresql://... task-processor --numthreads 5 --tasks myapp.tasks
#   docker run --rm -e DATABASE_URL=... task-processor run-api --bind 0.0.0.0:8000
#   docker run --rm -e DATABASE_URL=... task-processor task-processor status
#
# Arguments that start with "-" go to run-task-processor; a first argument naming one of the
# console scripts runs that command instead (see deploy/docker-entrypoint.sh).
#
# PID 1 is the supervisor itself, with no init in front of it: it handles SIGTERM (drain) and
# reaps every child, including orphans re-parented to it, so nothing else is needed there.
#
# Your own task code: build FROM this image and COPY it under /app (on PYTHONPATH), or mount it
# there at run time; then name its modules with --tasks or TASK_PROCESSOR_TASKS. See
# docs/operations.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: install the package and its dependencies into a virtualenv -------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/task-processor/venv
WORKDIR /src
COPY pyproject.toml setup.py setup.cfg README.md ./
COPY admin ./admin
COPY builtin_tasks ./builtin_tasks
COPY common ./common
COPY health ./health
COPY supervisor ./supervisor
COPY task_processor ./task_processor
COPY worker ./worker
COPY api ./api
RUN /opt/task-processor/venv/bin/pip install '.[metrics]'

# -- runtime: the virtualenv, a non-root user and nothing else ---------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/task-processor/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 taskprocessor \
    && useradd --system --uid 10001 --gid taskprocessor --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin taskprocessor \
    && mkdir -p /app \
    && chown taskprocessor:taskprocessor /app
COPY --from=build /opt/task-processor/venv /opt/task-processor/venv
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
WORKDIR /app
USER taskprocessor:taskprocessor

# The supervisor drains on SIGTERM within --drain-timeout (30 s by default): give
# `docker stop` a longer timeout (`docker stop -t 45`, compose `stop_grace_period: 45s`).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["check-health"]
ENTRYPOINT ["docker-entrypoint"]
CMD ["run-task-processor"]
