# syntax=docker/dockerfile:1
# The ssmd-connector image: a build stage makes the wheel, the runtime stage installs it for a
# non-root user. Config at /etc/ssmd/env.yaml (SSMD_ENV), secrets mounted as files (README.md,
# Operations > Deployment). Build: docker build -t ssmd:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Exactly what the wheel needs (tests/test_container.py builds a wheel from the same set).
COPY pyproject.toml README.md ./
COPY ssmd ./ssmd
RUN python -m pip wheel --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SSMD_ENV=/etc/ssmd/env.yaml
# A fixed uid/gid so mounted secret files and volumes can be owned by it (chown 10001).
RUN groupadd --system --gid 10001 ssmd \
    && useradd --system --uid 10001 --gid ssmd --home-dir /var/lib/ssmd --create-home \
       --shell /usr/sbin/nologin ssmd \
    && install -d -o ssmd -g ssmd -m 0750 /var/lib/ssmd/shared /var/lib/ssmd/var
COPY --from=build /dist/ /tmp/dist/
RUN python -m pip install /tmp/dist/ssmd-*.whl && rm -rf /tmp/dist
# The example config (the compose stack's); mount your own over /etc/ssmd.
COPY environments/compose.yaml /etc/ssmd/env.yaml
USER ssmd:ssmd
WORKDIR /var/lib/ssmd
# ops.address (metrics, /health, /ready); the example config listens on 0.0.0.0:9464.
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:9464/health', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ssmd-connector"]
