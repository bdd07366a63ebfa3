#!/usr/bin/env bash
# Install the Debian packages the test suite drives for real: SLURM and munge
# (the one-node test cluster), redis (service and benchmark of the end-to-end
# tests), prometheus (promtool checks generated configs, and scrapes the exporters in test_monitoring), the
# redis, mysqld and node exporters (the exporter sidecars run natively), mariadb (the mysql types
# run natively), sysbench (sysbench_client), curl, procps and openssl (used by generated scripts: openssl
# makes redis' TLS certificates), python3-venv (the test venv), chromium
# (tests/test_report.py opens the HTML report in it, headless). Idempotent; skips apt-get when everything is there.
set -euo pipefail

needed=(slurm-wlm munge redis-server redis-tools prometheus prometheus-redis-exporter prometheus-mysqld-exporter prometheus-node-exporter mariadb-server mariadb-client sysbench curl procps openssl python3-venv chromium)
missing=()
for package in "${needed[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    # Not fatal: the tests that need these programs skip with a reason (and fail under CI=true).
    echo "install-deps: not root, so not installing: ${missing[*]}" >&2
    exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
# The redis-server package starts no daemon here (no systemd); tests start their own.
