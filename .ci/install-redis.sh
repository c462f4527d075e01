#!/usr/bin/env bash
# Installs `redis-server` (Debian's `redis-server` package) for tests/test_redis_source.py,
# tests/test_control.py and tests/test_e2e_redis.py, which start a redis-server of their own
# on a free loopback port (no persistence, a temporary directory). Nothing needs the system
# service or port 6379: the package's service is kept from starting.
#
# Idempotent: does nothing when redis-server is already on PATH. Needs root or sudo, and
# apt-get (Debian, Ubuntu). Usage: bash .ci/install-redis.sh
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    echo "install-redis: already installed: $(redis-server --version | head -n 1)"
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-redis: run as root (or install sudo) to install redis-server" >&2
        exit 1
    fi
}

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-redis: no apt-get here; install redis-server (6.2 or later) on PATH by" \
        "other means" >&2
    exit 1
fi

started=$(date +%s)

# policy-rc.d answering 101 ("action forbidden") keeps the package's postinst from
# starting the service; added only for the install, and only if there was none.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > '$policy' && chmod 755 '$policy'"
    added_policy=1
fi
remove_policy() {
    if [ "$added_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
}
trap remove_policy EXIT

as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null

# Wherever the service got started anyway, stop it and keep it from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now redis-server.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/redis-server ]; then
    if as_root /etc/init.d/redis-server status >/dev/null 2>&1; then
        as_root /etc/init.d/redis-server stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        as_root update-rc.d redis-server disable >/dev/null 2>&1 || true
    fi
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "install-redis: redis-server is still not on PATH after the install" >&2
    exit 1
fi
echo "install-redis: installed $(redis-server --version | head -n 1) in $(($(date +%s) - started))s"
