#!/usr/bin/env bash
# Stop the test cluster started by start.sh (the one of ORCHC_CLUSTER_ROOT, if set):
# only the daemons its pid files name, never another cluster's. munged is left
# running (harmless, and lets the next start.sh skip restarting it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cluster/paths.sh
source "$HERE/paths.sh"

# Each daemon of this cluster still running, as "PIDFILE NAME"; slurmd*.pid also
# matches the one-node cluster's /run/slurmd.pid of earlier versions of start.sh.
daemons() {
    local file
    for file in "$PID_DIR/slurmctld.pid" "$PID_DIR"/slurmd*.pid; do
        [[ -e $file ]] || continue
        if running "$file" slurmctld; then echo "$file slurmctld"; fi
        if running "$file" slurmd; then echo "$file slurmd"; fi
    done
}

signal_all() {
    local file name
    while read -r file name; do
        kill "$1" "$(cat "$file")" 2>/dev/null || true
    done < <(daemons)
}

signal_all -TERM
for _ in $(seq 50); do
    if [[ -z $(daemons) ]]; then
        echo "cluster: stopped" >&2
        exit 0
    fi
    sleep 0.1
done
signal_all -KILL
echo "cluster: stopped (needed SIGKILL)" >&2
