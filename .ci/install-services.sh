#!/usr/bin/env bash
# Installs the real services the tests run, from Debian's packages: `prometheus` and
# `promtool` (package prometheus: dashboard, alert-rule and experiment-report tests),
# `redis-server` (package redis-server: RedisSource, the control commands, the Celery
# worker), and `prometheus-alertmanager` and `amtool` (package prometheus-alertmanager:
# flagwire guard's Alertmanager webhook, the shipped receiver config). Each test starts its own server on a free loopback port; no system service or
# default port is used, so the packages' services are kept from starting.
#
# Idempotent: installs only the packages whose binaries are missing from PATH. Needs root
# or sudo, and apt-get (Debian, Ubuntu). Usage: bash .ci/install-services.sh
set -euo pipefail

declare -A binary_of=(
    [prometheus]=promtool [redis-server]=redis-server [prometheus-alertmanager]=amtool
)
packages=(prometheus redis-server prometheus-alertmanager)
binaries=(prometheus promtool redis-server prometheus-alertmanager amtool)
wanted=()
for package in "${packages[@]}"; do
    if ! command -v "${binary_of[$package]}" >/dev/null 2>&1 \
        || { [ "$package" = prometheus ] && ! command -v prometheus >/dev/null 2>&1; } \
        || { [ "$package" = prometheus-alertmanager ] \
            && ! command -v prometheus-alertmanager >/dev/null 2>&1; }; then
        wanted+=("$package")
    fi
done
if [ "${#wanted[@]}" -eq 0 ]; then
    echo "install-services: already installed: ${binaries[*]}"
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-services: run as root (or install sudo) to install ${wanted[*]}" >&2
        exit 1
    fi
}

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-services: no apt-get here; put ${wanted[*]} on PATH by other means" >&2
    exit 1
fi

started=$(date +%s)
# policy-rc.d answering 101 ("action forbidden") keeps the packages' postinst scripts from
# starting their services; added only for the install, and only if there was none.
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
    apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null

# Wherever a service got started anyway, stop it and keep it from starting at boot.
for service in "${wanted[@]}"; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now "$service.service" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$service" ]; then
        as_root "/etc/init.d/$service" stop >/dev/null 2>&1 || true
        if command -v update-rc.d >/dev/null 2>&1; then
            as_root update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    fi
done

for binary in "${binaries[@]}"; do
    if ! command -v "$binary" >/dev/null 2>&1; then
        echo "install-services: $binary is still not on PATH after the install" >&2
        exit 1
    fi
done
echo "install-services: installed ${wanted[*]} in $(($(date +%s) - started))s"
