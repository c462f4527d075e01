#!/usr/bin/env bash
# Installs `prometheus` and `promtool` (Debian's `prometheus` package) for
# tests/test_integrations.py, which checks integrations/prometheus/flagwire-rules.yml with
# promtool and runs a real Prometheus of its own on a free loopback port. Nothing needs the
# system service or port 9090: the package's service is kept from starting.
#
# Idempotent: does nothing when both binaries are already on PATH. Needs root or sudo, and
# apt-get (Debian, Ubuntu). Usage: bash .ci/install-prometheus.sh
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "install-prometheus: already installed: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-prometheus: run as root (or install sudo) to install prometheus" >&2
        exit 1
    fi
}

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus: no apt-get here; install prometheus and promtool (2.x or" \
        "later) on PATH by other means" >&2
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
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Wherever the service got started anyway (an existing policy-rc.d that allows it), stop
# it and keep it from starting at boot: the tests never use it.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
    if as_root /etc/init.d/prometheus status >/dev/null 2>&1; then
        as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
fi

for binary in prometheus promtool; do
    if ! command -v "$binary" >/dev/null 2>&1; then
        echo "install-prometheus: $binary is still not on PATH after the install" >&2
        exit 1
    fi
done
echo "install-prometheus: installed $(prometheus --version 2>&1 | head -n 1)" \
    "in $(($(date +%s) - started))s"
