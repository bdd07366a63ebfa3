# Where the test cluster of start.sh and stop.sh keeps its files, and its name and port.
# Sourced by both. Without ORCHC_CLUSTER_ROOT: the system's places (/etc/slurm, ...);
# with it, everything under that folder, so a second cluster can run beside the first.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are for the scripts that source this file
ROOT=${ORCHC_CLUSTER_ROOT:-}
if [[ -z $ROOT ]]; then
    CONF_DIR=/etc/slurm
    LOG_DIR=/var/log/slurm
    STATE_DIR=/var/lib/slurm
    PID_DIR=/run
    CLUSTER_NAME=orchc-test
    PORT=${ORCHC_CLUSTER_PORT:-6817}
else
    [[ $ROOT == /* ]] || { echo "cluster: ORCHC_CLUSTER_ROOT must be an absolute path: $ROOT" >&2; exit 1; }
    CONF_DIR=$ROOT
    LOG_DIR=$ROOT/log
    STATE_DIR=$ROOT/state
    PID_DIR=$ROOT/run
    name=$(basename "$ROOT" | tr -c '[:alnum:]\n' '-' | tr '[:upper:]' '[:lower:]')
    CLUSTER_NAME=orchc-${name#orchc-}
    PORT=${ORCHC_CLUSTER_PORT:-7817}
fi
export SLURM_CONF=$CONF_DIR/slurm.conf

# running PIDFILE NAME: whether the process in PIDFILE is alive and called NAME (not a
# zombie: a killed daemon can linger as <defunct> for a while; not a reused pid).
running() {
    local pid state
    [[ -s $1 ]] && read -r pid <"$1" && [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
    [[ $state =~ ^[DRS]$ ]]
}
