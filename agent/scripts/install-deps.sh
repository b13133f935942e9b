#!/usr/bin/env bash
# Install everything qpagent needs on a Debian machine and build the venv.
# Idempotent: a second run only checks. Needs root for apt and /lib/modules.
set -euo pipefail
cd "$(dirname "$0")/../.."

DEBS=(python3-bpfcc bpfcc-tools python3-venv python3-pip frr iproute2 iputils-ping
      tcpdump ethtool prometheus prometheus-frr-exporter linux-headers-amd64)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: needs root (apt-get, kernel headers link, BPF)" >&2
    exit 1
fi

missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# BCC compiles against the running kernel's headers. When none ship for this
# kernel, fall back to Debian's generic headers (close enough for the uapi and
# the skb/xdp helpers these programs use) and say so.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build/include" ]; then
    build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
    if [ -z "$build" ] || [ -z "$common" ]; then
        echo "install-deps: no kernel headers for $(uname -r) and no Debian fallback" >&2
        exit 1
    fi
    mkdir -p "$kdir"
    ln -sfn "$build" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
    echo "install-deps: no headers for kernel $(uname -r); using $(basename "$build") for BCC"
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c 'import qpagent, qplab, pyroute2, prometheus_client, click, scapy, pytest, yaml, matplotlib, grafana_foundation_sdk' 2>/dev/null; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
fi
.venv/bin/python -c 'import bcc' || { echo "install-deps: python3-bpfcc not visible in the venv" >&2; exit 1; }
echo "install-deps: ready"
