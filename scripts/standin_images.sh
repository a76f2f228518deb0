#!/usr/bin/env bash
# Build local stand-ins for the Docker Hub images that docker-compose.yml and
# the Dockerfile use, for machines that can reach Debian / Maven Central but
# not a Docker registry (CI). Idempotent: an image that already exists with
# the same recipe is skipped.
#
#   cryptostream-standin/python:3.11-slim-bookworm   for python:3.11-slim-bookworm
#       debootstrap minbase bookworm + python3, python3-venv, python3-pip,
#       ca-certificates; this machine's CA bundle and a pip.conf that points
#       pip at it are baked in (containers reach the package registries only
#       with that bundle). `docker import`ed.
#   cryptostream-standin/kafka-base:bookworm-jre17   (intermediate)
#       debootstrap minbase bookworm + openjdk-17-jre-headless. `docker import`ed.
#   cryptostream-standin/kafka:4.1.1                 for apache/kafka:4.1.1
#       tests/docker/kafka-standin/Dockerfile FROM kafka-base, with the Kafka
#       4.1.1 jars from Maven Central (via scripts/kafka_local.py's cache, or
#       mvn with tests/docker/kafka-standin/pom.xml).
#
# Use them with the unchanged compose file:
#   KAFKA_IMAGE=cryptostream-standin/kafka:4.1.1 \
#   PYTHON_IMAGE=cryptostream-standin/python:3.11-slim-bookworm docker compose up -d
#
# Needs root (debootstrap, chroot), a running Docker engine
# (scripts/docker_engine.sh) and mvn for the Kafka jars.
#
# Environment knobs:
#   CRYPTOSTREAM_STANDIN_DIR  work dir for rootfs trees, .deb cache and build
#                             context (default /var/cache/cryptostream-standin)
#   DEBIAN_MIRROR             Debian mirror (default: read from this machine's
#                             apt sources; required when they name none)
#   HOST_CA_BUNDLE            CA bundle to bake in (default /etc/ssl/certs/ca-certificates.crt)
#   KAFKA_LIBS_DIR            use the Kafka jars from this dir; default: the cache
#                             of `scripts/kafka_local.py fetch` if that script
#                             exists, else mvn with tests/docker/kafka-standin/pom.xml
#   FORCE=1                   rebuild every image even if it exists
#   ONLY="python kafka"       build only these (default: both)
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${CRYPTOSTREAM_STANDIN_DIR:-/var/cache/cryptostream-standin}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
FORCE=${FORCE:-0}
ONLY=${ONLY:-python kafka}
SUITE=bookworm

PY_TAG=cryptostream-standin/python:3.11-slim-bookworm
KBASE_TAG=cryptostream-standin/kafka-base:bookworm-jre17
KAFKA_TAG=cryptostream-standin/kafka:4.1.1
KAFKA_CONTEXT_SRC=$REPO_ROOT/tests/docker/kafka-standin

# Bump when the rootfs recipe below changes: images with another value are rebuilt.
RECIPE=1
PY_INCLUDE=python3,python3-venv,python3-pip,ca-certificates
KBASE_INCLUDE=openjdk-17-jre-headless,ca-certificates
LABEL_KEY=org.cryptostream.standin.hash

log() { printf '[standin_images] %s\n' "$*"; }
die() { printf '[standin_images] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing: run scripts/docker_engine.sh first"
docker info >/dev/null 2>&1 || die "no Docker engine answers: run scripts/docker_engine.sh first"
[[ -r $HOST_CA_BUNDLE ]] || die "CA bundle $HOST_CA_BUNDLE not readable"

# ---------------------------------------------------------------- helpers
debian_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then
        printf '%s\n' "$DEBIAN_MIRROR"
        return
    fi
    local m=""
    # deb822: first stanza whose Suites list has the plain suite name.
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        m=$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; ok = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris = u[1] }
                    if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
                }
                if (ok && uris != "") { print uris; exit }
            }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z $m && -r /etc/apt/sources.list ]]; then
        m=$(awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { if ($(i+1) == suite) { print $i; exit } ; break } }' /etc/apt/sources.list)
    fi
    if [[ -z $m ]]; then
        echo "standin_images.sh: no Debian mirror in this machine's apt sources; set DEBIAN_MIRROR" >&2
        return 1
    fi
    printf '%s\n' "$m"
}

image_label() {  # image_label TAG -> value of $LABEL_KEY, empty if no image
    docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$1" 2>/dev/null || true
}

image_is_current() {  # image_is_current TAG HASH
    [[ $FORCE != 1 ]] && [[ $(image_label "$1") == "$2" ]]
}

cleanup_mounts() {  # unmount whatever an interrupted debootstrap left behind
    local root=$1 mp
    for mp in dev/pts dev proc sys; do
        if mountpoint -q "$root/$mp" 2>/dev/null; then umount -l "$root/$mp" || true; fi
    done
}

# build_rootfs NAME INCLUDE -> prints nothing, leaves $WORK/rootfs/NAME complete
build_rootfs() {
    local name=$1 include=$2 root=$WORK/rootfs/$1 mirror
    local stamp="recipe=$RECIPE suite=$SUITE include=$include"
    if [[ -f $root/.standin-complete && $(cat "$root/.standin-complete") == "$stamp" && $FORCE != 1 ]]; then
        log "rootfs $name: reusing $root"
        return
    fi
    mirror=$(debian_mirror)
    log "rootfs $name: debootstrap --variant=minbase --include=$include $SUITE ($mirror)"
    if [[ -d $root ]]; then
        cleanup_mounts "$root"
        rm -rf --one-file-system "$root"
    fi
    mkdir -p "$root" "$WORK/debs"
    if ! debootstrap --variant=minbase --include="$include" --cache-dir="$WORK/debs" \
        "$SUITE" "$root" "$mirror" >"$WORK/debootstrap-$name.log" 2>&1; then
        cleanup_mounts "$root"
        tail -n 30 "$WORK/debootstrap-$name.log" >&2
        die "debootstrap for $name failed (full log: $WORK/debootstrap-$name.log)"
    fi
    cleanup_mounts "$root"

    # Image hygiene: no package caches, docs or this machine's resolver/hostname.
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
        "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
    : >"$root/etc/resolv.conf"
    rm -f "$root/etc/hostname"
    # Snapshot mirrors serve Release files past their Valid-Until date.
    printf 'Acquire::Check-Valid-Until "false";\n' >"$root/etc/apt/apt.conf.d/99standin-snapshot"
    # No services may start inside an image build.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    printf '%s\n' "$stamp" >"$root/.standin-complete"
}

bake_ca_and_pip() {  # bake_ca_and_pip ROOT
    local root=$1
    # The bundle this machine trusts (includes any local registry CA) ...
    install -m 0644 "$HOST_CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
    # ... and a copy that survives a later update-ca-certificates run.
    install -D -m 0644 "$HOST_CA_BUNDLE" "$root/usr/local/share/ca-certificates/standin-host-bundle.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
}

import_rootfs() {  # import_rootfs ROOT TAG HASH CHANGE...
    local root=$1 tag=$2 hash=$3
    shift 3
    local changes=() c
    for c in "$@"; do changes+=(--change "$c"); done
    changes+=(--change "LABEL $LABEL_KEY=$hash")
    log "docker import $tag"
    tar --numeric-owner --xattrs -C "$root" \
        --exclude=./.standin-complete --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
        -cf - . | docker import "${changes[@]}" - "$tag" >/dev/null
}

BASE_PATH="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# ---------------------------------------------------------------- python
build_python() {
    local t0=$SECONDS hash
    hash="recipe=$RECIPE;include=$PY_INCLUDE;ca=$(sha256sum "$HOST_CA_BUNDLE" | cut -c1-16)"
    if image_is_current "$PY_TAG" "$hash"; then
        log "$PY_TAG exists, skipping"
        return
    fi
    build_rootfs python "$PY_INCLUDE"
    bake_ca_and_pip "$WORK/rootfs/python"
    import_rootfs "$WORK/rootfs/python" "$PY_TAG" "$hash" \
        "ENV $BASE_PATH" "ENV LANG=C.UTF-8" "CMD [\"python3\"]"
    log "smoke test: $(docker run --rm "$PY_TAG" python3 -c 'import sys, venv, ensurepip, ssl; print(sys.version.split()[0], ssl.OPENSSL_VERSION)')"
    log "$PY_TAG built in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- kafka
build_kafka() {
    local t0=$SECONDS base_hash ctx hash
    base_hash="recipe=$RECIPE;include=$KBASE_INCLUDE"
    if image_is_current "$KBASE_TAG" "$base_hash"; then
        log "$KBASE_TAG exists, skipping"
    else
        build_rootfs kafka-base "$KBASE_INCLUDE"
        import_rootfs "$WORK/rootfs/kafka-base" "$KBASE_TAG" "$base_hash" \
            "ENV $BASE_PATH" "ENV LANG=C.UTF-8" "CMD [\"bash\"]"
        log "$KBASE_TAG built in $((SECONDS - t0))s"
    fi

    # Kafka jars: KAFKA_LIBS_DIR if given, else the cache of scripts/kafka_local.py
    # (shared with the local-Kafka tests: downloaded once), else mvn below.
    if [[ -z ${KAFKA_LIBS_DIR:-} && -f $REPO_ROOT/scripts/kafka_local.py ]]; then
        local libs
        if libs=$(python3 "$REPO_ROOT/scripts/kafka_local.py" fetch 2>"$WORK/kafka-local-fetch.log" | tail -n 1) &&
            [[ -f $libs/kafka_2.13-4.1.1.jar && -f $libs/kafka-tools-4.1.1.jar ]]; then
            KAFKA_LIBS_DIR=$libs
        else
            log "scripts/kafka_local.py fetch gave no usable jars (log: $WORK/kafka-local-fetch.log); using mvn"
        fi
    fi

    # Recipe hash: the stand-in's files + the base image id.
    hash=$( (cd "$KAFKA_CONTEXT_SRC" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
             docker image inspect --format '{{.Id}}' "$KBASE_TAG"
             if [[ -n ${KAFKA_LIBS_DIR:-} ]]; then ls "$KAFKA_LIBS_DIR"; fi) | sha256sum | cut -c1-16)
    if image_is_current "$KAFKA_TAG" "$hash"; then
        log "$KAFKA_TAG exists (hash $hash), skipping"
        return
    fi

    local t1=$SECONDS
    ctx=$WORK/kafka-context
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp -a "$KAFKA_CONTEXT_SRC/." "$ctx/"
    if [[ -n ${KAFKA_LIBS_DIR:-} ]]; then
        log "Kafka jars: copying from $KAFKA_LIBS_DIR"
        mkdir -p "$ctx/libs"
        cp -a "$KAFKA_LIBS_DIR/." "$ctx/libs/"
    else
        command -v mvn >/dev/null 2>&1 || {
            log "installing maven"
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends maven
        }
        log "Kafka jars: mvn dependency:copy-dependencies (Kafka 4.1.1 from Maven Central)"
        mvn -q -B -f "$ctx/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$ctx/libs" >"$WORK/mvn-kafka.log" 2>&1 || {
            tail -n 30 "$WORK/mvn-kafka.log" >&2
            die "maven could not resolve the Kafka jars (log: $WORK/mvn-kafka.log)"
        }
        rm -rf "$ctx/target"
    fi
    ls "$ctx"/libs/kafka_2.13-4.1.1.jar "$ctx"/libs/kafka-tools-4.1.1.jar >/dev/null ||
        die "Kafka 4.1.1 jars missing in $ctx/libs"
    log "Kafka jars: $(find "$ctx/libs" -name '*.jar' | wc -l) jars, $(du -sh "$ctx/libs" | cut -f1)"

    log "docker build $KAFKA_TAG"
    # The classic builder: works with every engine version and needs no buildx.
    DOCKER_BUILDKIT=0 docker build \
        --build-arg "BASE_IMAGE=$KBASE_TAG" --build-arg "STANDIN_HASH=$hash" \
        -t "$KAFKA_TAG" "$ctx" >"$WORK/build-kafka.log" 2>&1 || {
        tail -n 30 "$WORK/build-kafka.log" >&2
        die "docker build $KAFKA_TAG failed (log: $WORK/build-kafka.log)"
    }
    log "$KAFKA_TAG built in $((SECONDS - t1))s (base included: $((SECONDS - t0))s)"
}

mkdir -p "$WORK"
log "work dir $WORK"
for what in $ONLY; do
    case $what in
        python) build_python ;;
        kafka) build_kafka ;;
        *) die "unknown image '$what' in ONLY (python, kafka)" ;;
    esac
done
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep '^cryptostream-standin/' | sed 's/^/[standin_images]   /'
log "done"
