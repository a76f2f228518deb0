# cryptostream service image.
#
#   docker build -t cryptostream:local .
#   docker run --rm --env-file .env -v "$PWD/data:/data" cryptostream:local
#
# PYTHON_IMAGE selects the base of both stages. The Dockerfile only relies on
# what every Debian-based CPython 3.11+ image has: `python3 -m venv`, a shell,
# coreutils and useradd/groupadd.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ----------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv

WORKDIR /src

# Runtime dependencies first (only [project].dependencies, no dev extras), in
# their own layer so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/venv/bin/python3 -m pip install -r /tmp/requirements.txt

# Then the package itself, as a wheel built from the source tree.
COPY . .
RUN /opt/venv/bin/python3 -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/python3 -m pip install --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/cryptostream --version

# ----------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

# The package's version (cryptostream/__init__.py; a test keeps the two equal).
LABEL org.opencontainers.image.title="cryptostream" \
      org.opencontainers.image.version="0.4.0"

ARG APP_UID=10001
ARG APP_GID=10001

RUN groupadd --gid "${APP_GID}" cryptostream \
    && useradd --uid "${APP_UID}" --gid "${APP_GID}" --no-log-init \
        --home-dir /app --no-create-home --shell /usr/sbin/nologin cryptostream \
    && mkdir -p /app /data \
    && chown "${APP_UID}:${APP_GID}" /data

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CRYPTOSTREAM_STORAGE__DATA_DIR=/data \
    CRYPTOSTREAM_WEB__HOST=0.0.0.0 \
    CRYPTOSTREAM_LOG__FORMAT=json

WORKDIR /app
# Any uid may run the image (docker-compose.yml runs it as the host user so
# that ./data stays the user's); only /data has to be writable.
USER ${APP_UID}:${APP_GID}
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["cryptostream", "check"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["cryptostream"]
CMD ["run"]
