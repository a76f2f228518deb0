#!/usr/bin/env bash
# The whole stack as a user runs it (docs/performance.md): from built images,
# `docker compose up -d` with the demo source -> seconds to the first row in
# ./data/crypto_data.csv, and the stack's memory a minute later; then `down -v`.
# Each run in a temp copy of the user's files, under its own compose project
# name and free host ports.
#
#   ./scripts/stack_bench.sh                 # one run
#   ./scripts/stack_bench.sh --repeat 3      # three, one after another
#   ./scripts/stack_bench.sh --help
#
# Needs python3 (3.11+), a Docker engine and Compose v2. As root (CI and machines
# without an image registry) it starts the engine and builds the local stand-in
# images like scripts/test does, unless KAFKA_IMAGE and PYTHON_IMAGE are set;
# otherwise the compose file's own images are used.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

if [[ $(id -u) -eq 0 && -z ${KAFKA_IMAGE:-} && -z ${PYTHON_IMAGE:-} ]]; then
    step "docker engine, Compose v2 and stand-in images (skips what is done)"
    ./scripts/docker_engine.sh >&2
    ./scripts/standin_images.sh >&2
    export KAFKA_IMAGE=cryptostream-standin/kafka:4.1.1
    export PYTHON_IMAGE=cryptostream-standin/python:3.11-slim-bookworm
fi
export COMPOSE_BAKE=${COMPOSE_BAKE:-false}

python=python3
[[ -x .venv/bin/python ]] && python=.venv/bin/python
step "docker compose up -d -> first row, memory"
exec "$python" -m bench.stack "$@"
