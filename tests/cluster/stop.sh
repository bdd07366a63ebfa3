#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by start.sh. munged is left running
# (harmless, and lets the next start.sh skip restarting it).
set -euo pipefail

# Ignore zombies: a killed daemon can linger as <defunct> for a while.
running() { pgrep -x -r D,R,S "$1" >/dev/null; }

pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
for _ in $(seq 50); do
    if ! running slurmd && ! running slurmctld; then
        echo "cluster: stopped" >&2
        exit 0
    fi
    sleep 0.1
done
pkill -9 -x slurmd 2>/dev/null || true
pkill -9 -x slurmctld 2>/dev/null || true
echo "cluster: stopped (needed SIGKILL)" >&2
