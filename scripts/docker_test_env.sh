# shellcheck shell=bash
# Sourced by scripts/test with the pytest arguments: gets tests/docker (the
# `docker compose` end-to-end test) what it needs, and exports it to pytest.
#
#   root (CI and these dev machines, which reach no image registry):
#     scripts/docker_engine.sh    docker.io, dockerd, Compose v2   (skips what is done)
#     scripts/standin_images.sh   local stand-ins for python:3.11-slim-bookworm and
#                                 apache/kafka:4.1.1               (skips existing ones)
#     KAFKA_IMAGE, PYTHON_IMAGE   point the unchanged compose file at the stand-ins
#                                 (set both yourself to test other images instead)
#     COMPOSE_BAKE=false          compose's own builder: the engine has no buildx
#   not root: nothing is installed; the test uses the engine you run, with the
#     compose file's Docker Hub images, and skips without one.
#
# With CI set, the test FAILS when it finds no engine: CI must run it.
# Nothing is done when the pytest arguments name only paths outside tests/docker
# (e.g. `./scripts/test tests/unit`). The times go to the test's timing table.

_docker_tests_selected() {
    local arg named=0
    for arg in "$@"; do
        [[ $arg == -* ]] && continue
        case ${arg%%::*} in
            tests | tests/ | ./tests | ./tests/ | tests/docker* | ./tests/docker*) return 0 ;;
        esac
        [[ -e ${arg%%::*} ]] && named=1
    done
    ((named == 0))
}

_docker_since() {  # seconds since an $EPOCHREALTIME value, one decimal
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

if ! _docker_tests_selected "$@"; then
    step "docker: not needed by the selected tests"
elif [[ $(id -u) -eq 0 ]]; then
    step "docker engine and Compose v2 (for tests/docker)"
    _t0=$EPOCHREALTIME
    ./scripts/docker_engine.sh
    DOCKER_E2E_ENGINE_SECONDS=$(_docker_since "$_t0")
    export DOCKER_E2E_ENGINE_SECONDS
    if [[ -n ${KAFKA_IMAGE:-} && -n ${PYTHON_IMAGE:-} ]]; then
        step "docker images: using KAFKA_IMAGE=$KAFKA_IMAGE PYTHON_IMAGE=$PYTHON_IMAGE"
    else
        step "stand-in images for python and apache/kafka (built once)"
        _t0=$EPOCHREALTIME
        ./scripts/standin_images.sh
        DOCKER_E2E_IMAGES_SECONDS=$(_docker_since "$_t0")
        export DOCKER_E2E_IMAGES_SECONDS
        export KAFKA_IMAGE=cryptostream-standin/kafka:4.1.1
        export PYTHON_IMAGE=cryptostream-standin/python:3.11-slim-bookworm
    fi
    export COMPOSE_BAKE=${COMPOSE_BAKE:-false}
    unset _t0
else
    step "docker: not root, nothing installed; tests/docker use the engine you run, if any"
fi
