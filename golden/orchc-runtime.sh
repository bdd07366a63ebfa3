# shellcheck shell=bash
# orchc job runtime: the helpers and traps every job script of an output folder shares. A job script sets
# ORCHC_RUN_DIR and ORCHC_ROLE (service or client), checks this file's sha256 and sources it; the script then
# sets ORCHC_JOB, ORCHC_TYPE and ORCHC_RESULTS and calls the helpers its recipe needs. Written by orchc, plain
# bash: what differs between jobs is in the job script, never here.
ORCHC_PIDS=()
ORCHC_WATCHERS=()
ORCHC_REMOVE=()
ORCHC_ENDPOINT=""
ORCHC_AT=()
ORCHC_LEVEL=0
ORCHC_COLLECT=""

orchc_log() { printf '[orchc %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# orchc_script_lines: the lines of the job script (not of this runtime) in the calls that led here, innermost
# first: the failing line itself (when the ERR trap's handler asks), then the lines that called the helpers.
orchc_script_lines() {
    local i script=${BASH_SOURCE[${#BASH_SOURCE[@]} - 1]}
    for ((i = 1; i < ${#BASH_LINENO[@]}; i++)); do
        [ "${BASH_SOURCE[i + 1]:-}" != "$script" ] || printf '%s\n' "${BASH_LINENO[i]}"
    done
}

# orchc_where: " in phase P at FILE:LINE: COMMAND" for the first line of the job script in the calls that led
# here that lies in the block the last ORCHC_AT line announced: the failing line itself, or the phase line that
# called a failing helper. ORCHC_AT holds the phase, the type file and line, the script lines of the
# block and whether its lines follow the type file's one for one (no Jinja statements in between).
orchc_where() {
    local line text
    [ "${#ORCHC_AT[@]}" -ge 1 ] || return 0
    if [ "${#ORCHC_AT[@]}" -lt 6 ]; then
        printf ' in %s' "${ORCHC_AT[0]}"
        return 0
    fi
    for line in $(orchc_script_lines); do
        if [ "$line" -ge "${ORCHC_AT[3]}" ] && [ "$line" -lt "$((ORCHC_AT[3] + ORCHC_AT[4]))" ]; then
            text=$(sed -n "${line}{p;q}" "$0" 2>/dev/null) || text=""
            if [ "${ORCHC_AT[5]}" = 1 ]; then
                printf ' in phase %s at %s:%s' "${ORCHC_AT[0]}" "${ORCHC_AT[1]}" "$((ORCHC_AT[2] + line - ORCHC_AT[3]))"
            else
                printf ' in phase %s at %s:%s (the block starting there)' "${ORCHC_AT[0]}" "${ORCHC_AT[1]}" "${ORCHC_AT[2]}"
            fi
            printf ': %s' "${text#"${text%%[![:space:]]*}"}"
            return 0
        fi
    done
    printf ' in phase %s at %s:%s' "${ORCHC_AT[0]}" "${ORCHC_AT[1]}" "${ORCHC_AT[2]}"
}
orchc_fail() { orchc_error "$*$(orchc_where)"; exit 1; }
# orchc_error MESSAGE: log an error; a client keeps the first one for results.json.
orchc_error() {
    orchc_log "error: $1"
    if [ "$ORCHC_ROLE" = client ] && [ -n "${ORCHC_RESULTS:-}" ] && [ ! -e "$ORCHC_RESULTS/error" ] &&
        mkdir -p "$ORCHC_RESULTS" 2>/dev/null; then
        printf '%s\n' "$1" >"$ORCHC_RESULTS/error" 2>/dev/null || true
    fi
}
# Reported once, by the shell that ran the failing line (not again by every shell that waits for it).
orchc_on_error() {
    local status=$1 command=$3
    if [ "$BASH_SUBSHELL" = "$ORCHC_LEVEL" ]; then
        orchc_error "command failed with exit status $status: $command$(orchc_where)"
    fi
}
trap 'orchc_on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR

# Runs on every exit, including scancel and the time limit (TERM, or the --signal
# of a client): stop what this job started, collect results, withdraw the endpoint.
orchc_cleanup() {
    local status=$? pid tries=0 children dir
    set +o errexit
    trap - EXIT TERM INT USR1 ERR
    # withdrawn first: no client starts against a service that is stopping (before, it went last, after every
    # process had ended, which took over 10 s on a loaded node)
    if [ -n "$ORCHC_ENDPOINT" ]; then
        rm -f "$ORCHC_ENDPOINT"
    fi
    orchc_observer_stop
    for pid in "${ORCHC_PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || orchc_kill_tree TERM "$pid"
    done
    while [ "$tries" -lt 50 ] && orchc_any_alive; do
        sleep 0.2
        tries=$((tries + 1))
    done
    for pid in "${ORCHC_PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || orchc_kill_tree KILL "$pid"
    done
    [ -z "${ORCHC_WATCHER:-}" ] || ORCHC_WATCHERS+=("$ORCHC_WATCHER")
    # A watcher goes before its children (a sleep), so it cannot report their deaths.
    for pid in "${ORCHC_WATCHERS[@]}"; do
        children=$(pgrep -P "$pid" 2>/dev/null)
        kill -KILL "$pid" 2>/dev/null
        # shellcheck disable=SC2086  # a list of process ids
        [ -z "$children" ] || kill -KILL $children 2>/dev/null
    done
    wait 2>/dev/null
    # what the job kept on a node's own disk (orchc_remove_at_end), once nothing of the job writes there
    for dir in "${ORCHC_REMOVE[@]}"; do rm -rf -- "$dir"; done
    if [ "$ORCHC_ROLE" = client ]; then
        orchc_client_ends
    fi
    # its clients, still waiting, stop at once
    [ "$ORCHC_ROLE" != service ] || orchc_phase ended "$status"
    orchc_record_job "$status"
    exit "$status"
}
# orchc_remove_at_end DIR: create DIR (a folder of this job on the node's own disk) and remove it when the job ends.
orchc_remove_at_end() {
    mkdir -p -- "$1" || orchc_fail "cannot create $1 on $(hostname)'s own disk: see storage: local in the site profile or the recipe"
    ORCHC_REMOVE+=("$1")
}
# orchc_client_ends: what a client does as it ends (orchc_cleanup's status in and out): collect its results (its
# results phase, then results.json) and tell its service it is done.
orchc_client_ends() {
    ORCHC_STATUS=$status
    if [ -n "$ORCHC_COLLECT" ]; then
        # In a background job of its own, so that errexit holds inside the results phase.
        (set -o errexit; trap 'orchc_on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR; "$ORCHC_COLLECT") &
        if wait "$!"; then
            # A benchmark stopped on purpose (its duration, the time-limit signal) that kept its
            # results has done its job: it ends COMPLETED, and its results say partial.
            case $(orchc_stopped_by) in duration | time_limit) status=0 ;; esac
        else
            status=1
            ORCHC_STATUS=1
            orchc_results ""
        fi
    fi
    # A client that failed before its results phase, or whose type writes no results.json, still says how it ended.
    [ -f "$ORCHC_RESULTS/results.json" ] || orchc_results ""
    orchc_mark_done
}
orchc_stopped() {
    orchc_log "received SIG$1: stopping"
    # USR1 is the client's own --signal, sent ahead of its time limit: a planned stop.
    if [ "$ORCHC_ROLE" = client ]; then
        if [ "$1" = USR1 ]; then orchc_mark_stopped time_limit; else orchc_mark_stopped "SIG$1"; fi
    fi
    exit 143
}
# orchc_record_job [EXIT_STATUS]: jobs/<job>.json in the run folder (written atomically): the SLURM job that
# ran this job, its nodes, when it started and, once it ends, when and with which exit status.
orchc_record_job() {
    local file="$ORCHC_RUN_DIR/jobs/$ORCHC_JOB.json" ended=null status=null nodes
    ORCHC_STARTED=${ORCHC_STARTED:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
    if [ "$#" -gt 0 ]; then
        ended="\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\""
        status=$1
    fi
    mkdir -p "$ORCHC_RUN_DIR/jobs" 2>/dev/null || return 0
    # a step of one allocation runs on its step's nodes, not on all of the allocation's
    nodes=${ORCHC_ALLOCATION:+${SLURM_STEP_NODELIST:-}}
    printf '{"job": %s, "slurm_job_id": %s, "nodes": %s, "started": "%s", "ended": %s, "exit_status": %s}\n' \
        "$(orchc_json_string "$ORCHC_JOB")" "$(orchc_json_string "${SLURM_JOB_ID:-}")" \
        "$(orchc_json_string "${nodes:-${SLURM_JOB_NODELIST:-$(hostname)}}")" "$ORCHC_STARTED" "$ended" "$status" \
        >"$file.tmp.$$" 2>/dev/null && mv -f "$file.tmp.$$" "$file" 2>/dev/null || true
}
# orchc_self_id: who this job is in the run's files (endpoints/, done/): its SLURM job id, or, when it runs as a
# step of one allocation (allocation: one; allocation.sbatch exports ORCHC_ALLOCATION), ALLOCATION.JOB: the
# allocation's job id and this job's name, which is also the step's name (srun --job-name).
orchc_self_id() {
    if [ -n "${ORCHC_ALLOCATION:-}" ] && [ "$ORCHC_ALLOCATION" = "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_STEP_ID:-}" ]; then
        printf '%s.%s' "$ORCHC_ALLOCATION" "$ORCHC_JOB"
    else
        printf '%s' "${SLURM_JOB_ID:-0}"
    fi
}
# orchc_in_queue ID: status 0 while the job ID (digits), or the step ALLOCATION.JOB, is in the queue; 1 once
# it has left; 2 when squeue cannot tell (no squeue, or it failed).
orchc_in_queue() {
    local listed
    command -v squeue >/dev/null 2>&1 || return 2
    case $1 in
        *.*)
            listed=$(squeue -h -s -j "${1%%.*}" -o %j 2>/dev/null) || return 2
            grep -qxF -- "${1#*.}" <<<"$listed" || return 1
            ;;
        *)
            listed=$(squeue -h -j "$1" -o %T 2>/dev/null) || return 2
            [ -n "$listed" ] || return 1
            ;;
    esac
}
# orchc_queue_state ID: the SLURM state of the job ID (digits) as squeue gives it (PENDING, RUNNING, ...), or RUNNING for a
# step ALLOCATION.JOB that squeue lists; nothing once it has left the queue; status 2 when squeue cannot tell.
orchc_queue_state() {
    local listed
    command -v squeue >/dev/null 2>&1 || return 2
    case $1 in
        *.*)
            listed=$(squeue -h -s -j "${1%%.*}" -o %j 2>/dev/null) || return 2
            if grep -qxF -- "${1#*.}" <<<"$listed"; then printf RUNNING; fi
            ;;
        *)
            listed=$(squeue -h -j "$1" -o %T 2>/dev/null) || return 2
            printf '%s' "${listed%%$'\n'*}"
            ;;
    esac
}
# orchc_ended_state STATE: whether a job in STATE (orchc_queue_state's answer; nothing: gone from the queue) has ended.
orchc_ended_state() {
    case $1 in
        "" | BOOT_FAIL | CANCELLED | COMPLETED | DEADLINE | FAILED | NODE_FAIL | OUT_OF_MEMORY | PREEMPTED | TIMEOUT) return 0 ;;
    esac
    return 1
}
# orchc_kill_tree SIGNAL PID: signal PID and every process under it, the deepest first (a process
# whose parent has died is out of reach, so children go before their parents).
orchc_kill_tree() {
    local child
    for child in $(pgrep -P "$2" 2>/dev/null || true); do
        orchc_kill_tree "$1" "$child"
    done
    kill "-$1" "$2" 2>/dev/null || true
}
# orchc_end_children PID: stop what PID started (the benchmark's background programs, when it ends).
orchc_end_children() {
    local child
    for child in $(pgrep -P "$1" || true); do
        orchc_kill_tree TERM "$child"
    done
}
orchc_any_alive() {
    local pid
    for pid in "${ORCHC_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}
trap orchc_cleanup EXIT
trap 'orchc_stopped TERM' TERM
trap 'orchc_stopped INT' INT
trap 'orchc_stopped USR1' USR1

# orchc_nap SECONDS: sleep without starting a process: a read with a timeout on a private FIFO that nobody writes to
# (opened read-write, so it never reaches its end). A wake costs a system call, not a fork and an exec of sleep; a
# trapped signal ends the nap at once. Without a FIFO (no mkfifo, no writable TMPDIR) it is sleep.
orchc_nap() {
    if [ -z "${ORCHC_NAP_FD:-}" ]; then
        local dir
        if dir=$(mktemp -d "${TMPDIR:-/tmp}/orchc-nap.XXXXXX" 2>/dev/null) && mkfifo "$dir/fifo" 2>/dev/null; then
            exec {ORCHC_NAP_FD}<>"$dir/fifo"
        else
            ORCHC_NAP_FD=none
        fi
        [ -z "$dir" ] || rm -rf "$dir"
    fi
    if [ "$ORCHC_NAP_FD" = none ]; then
        sleep "$1"
    else
        read -rt "$1" -u "$ORCHC_NAP_FD" _ || true
    fi
}

# orchc_started PID: remember a process (group) this job started, and have the job's watcher watch it too: if this
# batch shell is killed outright (SIGKILL skips every trap), the watcher stops them and withdraws the endpoint.
orchc_started() {
    ORCHC_PIDS+=("$1")
    orchc_watch
}
# orchc_watch: (re)start the job's one watcher, over every process in ORCHC_PIDS. It looks whether the batch shell
# is alive every ORCHC_WATCH_EVERY seconds (default 5), napping in between (orchc_nap: no process per look), so
# beside a benchmark it costs next to nothing; a job has one, however many processes it started.
orchc_watch() {
    [ -z "${ORCHC_WATCHER:-}" ] || kill -KILL "$ORCHC_WATCHER" 2>/dev/null || true
    orchc_nap 0  # the FIFO is opened here, in the batch shell, once for every watcher
    (
        trap - EXIT TERM INT USR1 ERR
        set +o errexit
        while kill -0 "$$" 2>/dev/null; do orchc_nap "${ORCHC_WATCH_EVERY:-5}"; done
        for pid in "${ORCHC_PIDS[@]}"; do
            kill -TERM -- "-$pid" 2>/dev/null || orchc_kill_tree TERM "$pid"
        done
        [ "$ORCHC_ROLE" != service ] || { orchc_withdraw_endpoint; orchc_phase ended 137; }
        sleep 5
        for pid in "${ORCHC_PIDS[@]}"; do
            kill -KILL -- "-$pid" 2>/dev/null || orchc_kill_tree KILL "$pid"
        done
    ) >/dev/null 2>&1 </dev/null &
    ORCHC_WATCHER=$!
    disown "$!"  # its end is no news: bash would report it as "Killed"
}

# orchc_backoff: sleep ORCHC_DELAY tenths of a second, then double it (at most 5 s), so that a long
# wait polls the shared file system or slurmctld rarely.
orchc_backoff() {
    sleep "$((ORCHC_DELAY / 10)).$((ORCHC_DELAY % 10))"
    ORCHC_DELAY=$((ORCHC_DELAY * 2 > 50 ? 50 : ORCHC_DELAY * 2))
}

orchc_service_alive() {
    if [ -n "${ORCHC_SERVICE_PID:-}" ] && ! kill -0 "$ORCHC_SERVICE_PID" 2>/dev/null; then
        orchc_fail "the service process exited before it became ready$(orchc_bind_failure)$(orchc_rank_failure)"
    fi
}

# orchc_ranks_folder: where the ranks of this job say how they ended (ORCHC_RANKS, created empty).
orchc_ranks_folder() {
    ORCHC_RANKS="$ORCHC_RUN_DIR/ranks/$ORCHC_JOB.${SLURM_JOB_ID:-0}"
    rm -rf "$ORCHC_RANKS"
    mkdir -p "$ORCHC_RANKS" || orchc_fail "cannot create $ORCHC_RANKS"
}
# orchc_ranks_start NODES WORKER_ARGS [VARIABLE...]: run the function orchc_rank once on each of the job's NODES
# nodes, one srun task per node (a type's multi_node: command; README "Across nodes"); meant to run in the
# background (`&`), where it becomes srun in a session of its own. Each rank finds $ORCHC_NODE_RANK (0 on this,
# the job's first node), $ORCHC_NNODES and $ORCHC_MASTER_ADDR (this host); every rank but 0 gets WORKER_ARGS
# after its command. The job's quoted values (orchc_v*) and the VARIABLEs (its secrets) are exported for the
# ranks' shells. One rank failing ends them all (--kill-on-bad-exit); each rank leaves "STATUS NODE" in
# $ORCHC_RANKS/RANK.exit as it ends, which orchc_rank_failure reads.
orchc_ranks_start() {
    local name
    ORCHC_NNODES=$1 ORCHC_WORKER_ARGS=$2
    ORCHC_MASTER_ADDR=$(hostname)
    for name in $(compgen -v orchc_v) "${@:3}"; do export "${name?}"; done
    export ORCHC_NNODES ORCHC_WORKER_ARGS ORCHC_MASTER_ADDR ORCHC_RANKS
    export -f orchc_rank orchc_rank_run
    exec setsid srun --nodes="$1" --ntasks="$1" --ntasks-per-node=1 --kill-on-bad-exit=1 --label bash -c orchc_rank_run
}
# orchc_rank_run: one rank (a task of orchc_ranks_start's srun): orchc_rank with the rank's environment.
orchc_rank_run() {
    local status=0 node=${SLURMD_NODENAME:-$(hostname)}
    ORCHC_NODE_RANK=${SLURM_NODEID:?orchc_rank_run runs as a task of srun}
    export ORCHC_NODE_RANK
    ORCHC_RANK_ARGS=""
    [ "$ORCHC_NODE_RANK" = 0 ] || ORCHC_RANK_ARGS=$ORCHC_WORKER_ARGS
    export ORCHC_RANK_ARGS   # read by orchc_rank, the job script's function
    echo "[orchc] rank $ORCHC_NODE_RANK of $ORCHC_NNODES starts on node $node" >&2
    orchc_rank || status=$?
    printf '%s %s\n' "$status" "$node" >"$ORCHC_RANKS/$ORCHC_NODE_RANK.exit"
    return "$status"
}
# orchc_replicas_plan PORT: one engine per GPU (a recipe's replicas: per_gpu; README "One engine per GPU"): the
# job's GPUs as SLURM gave them (CUDA_VISIBLE_DEVICES of the gres, else SLURM_JOB_GPUS) in ORCHC_REPLICA_GPUS, replica I
# on GPU ORCHC_REPLICA_GPUS[I] and port ORCHC_REPLICA_PORTS[I]: replica 0 on PORT (the service's own, ports[0]), the
# others on free ports of the node (orchc_free_ports); fails when the job got no GPU.
orchc_replicas_plan() {
    local gpus=${CUDA_VISIBLE_DEVICES:-} more=()
    [ -n "$gpus" ] && [ "$gpus" != NoDevFiles ] || gpus=${SLURM_JOB_GPUS:-}
    [ -n "$gpus" ] || orchc_fail "replicas: per_gpu: the job got no GPU (no CUDA_VISIBLE_DEVICES nor SLURM_JOB_GPUS): ask for one with gres: gpu:N"
    IFS=, read -r -a ORCHC_REPLICA_GPUS <<<"$gpus"
    [ "${#ORCHC_REPLICA_GPUS[@]}" -lt 2 ] || read -r -a more <<<"$(orchc_free_ports "$((${#ORCHC_REPLICA_GPUS[@]} - 1))")"
    ORCHC_REPLICA_PORTS=("$1" "${more[@]}")
    [ "${#ORCHC_REPLICA_PORTS[@]}" = "${#ORCHC_REPLICA_GPUS[@]}" ] || orchc_fail "replicas: per_gpu: no free port for each of ${#ORCHC_REPLICA_GPUS[@]} replicas on $(hostname)"
    orchc_ranks_folder
    orchc_log "one engine per GPU: ${#ORCHC_REPLICA_GPUS[@]} replicas on GPUs $gpus, ports ${ORCHC_REPLICA_PORTS[*]}"
}
# orchc_replicas_start: run the function orchc_replica once per GPU of orchc_replicas_plan, each with
# CUDA_VISIBLE_DEVICES its own GPU, ORCHC_REPLICA its number and ORCHC_REPLICA_PORT its port; meant to run in the
# background (`&`, the service's process). Each leaves "STATUS GPU" in $ORCHC_RANKS/replica-I.exit as it ends
# (orchc_rank_failure names it); the first to end stops the others and ends this with its status.
orchc_replicas_start() {
    local i status=0 pids=()
    trap - EXIT ERR
    set +o errexit
    for i in "${!ORCHC_REPLICA_GPUS[@]}"; do
        (
            export CUDA_VISIBLE_DEVICES=${ORCHC_REPLICA_GPUS[i]} ORCHC_REPLICA=$i ORCHC_REPLICA_PORT=${ORCHC_REPLICA_PORTS[i]}
            echo "[orchc] replica $i starts on GPU $CUDA_VISIBLE_DEVICES, port $ORCHC_REPLICA_PORT" >&2
            orchc_replica
            status=$?
            printf '%s %s\n' "$status" "${ORCHC_REPLICA_GPUS[i]}" >"$ORCHC_RANKS/replica-$i.exit"
            exit "$status"
        ) &
        pids+=("$!")
    done
    wait -n
    status=$?
    for i in "${pids[@]}"; do orchc_kill_tree TERM "$i"; done
    exit "$((status == 0 ? 1 : status))"   # an engine that ends by itself has failed its clients
}
# orchc_replicas_each COMMAND...: COMMAND once per replica (the type's health check), with ORCHC_REPLICA,
# ORCHC_REPLICA_PORT and ORCHC_REPLICA_GPU set; the job is ready when it passed for every replica. COMMAND runs in a
# subshell (errexit as in the job, not `||`'s), so that its failure is said with the replica that ended, when one did:
# replica I on GPU G exited with status S (a failing replica stops the others, which fails the check under way).
orchc_replicas_each() {
    local i status
    for i in "${!ORCHC_REPLICA_GPUS[@]}"; do
        ORCHC_REPLICA=$i ORCHC_REPLICA_PORT=${ORCHC_REPLICA_PORTS[i]} ORCHC_REPLICA_GPU=${ORCHC_REPLICA_GPUS[i]}
        orchc_log "replica $i (GPU $ORCHC_REPLICA_GPU, port $ORCHC_REPLICA_PORT): health check"
        status=0
        ("$@") &
        wait "$!" || status=$?
        [ "$status" = 0 ] || orchc_fail "replica $i (GPU $ORCHC_REPLICA_GPU, port $ORCHC_REPLICA_PORT) did not become ready (its health check ended with status $status)$(orchc_rank_failure)"
    done
}
# orchc_tasks_run TASKS COMMAND...: COMMAND once in each of TASKS srun tasks, one per node of the job (a client
# type's multi_node: its load generators; each finds SLURM_PROCID of SLURM_STEP_NUM_TASKS and takes its share);
# its status is srun's. Variables assigned before the call, or given as NAME=VALUE words first (the key), reach the
# tasks in their environment.
# srun answers a SIGTERM by killing its tasks outright, and orchc stops a benchmark by sending SIGTERM to each
# process under it (orchc_limit_duration, orchc_cleanup): so srun runs outside that tree (a child of a subshell
# that is gone), and a TERM or INT here reaches the tasks as SIGUSR1, which srun forwards, to stop as they would.
orchc_tasks_run() {
    local tasks=$1 dir status assigned=()
    shift
    # NAME=VALUE words first (a job's `run` under its site: the key for the container): exported to srun's
    # environment by the builtin, never on a command line
    while [ "$#" -gt 0 ] && [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do
        assigned+=("$1")
        shift
    done
    dir=$(mktemp -d "${TMPDIR:-/tmp}/orchc-tasks.XXXXXX") || orchc_fail "cannot create a temporary folder"
    (
        (
            trap - EXIT ERR
            set +o errexit
            [ "${#assigned[@]}" -eq 0 ] || export "${assigned[@]}"
            srun --nodes="$tasks" --ntasks="$tasks" --ntasks-per-node=1 --label "$@" </dev/null &
            echo "$!" >"$dir/srun.pid"
            wait "$!"
            echo "$?" >"$dir/status"
        ) &
    )
    trap 'orchc_tasks_stop "$dir"' TERM INT
    while [ ! -s "$dir/status" ]; do sleep 0.2; done
    trap - TERM INT
    read -r status <"$dir/status"
    rm -rf "$dir"
    return "$status"
}
# orchc_tasks_stop DIR: ask the tasks of orchc_tasks_run's srun (its pid in DIR) to stop.
orchc_tasks_stop() {
    local pid=""
    while [ -z "$pid" ]; do read -r pid 2>/dev/null <"$1/srun.pid" || sleep 0.1; done
    kill -USR1 "$pid" 2>/dev/null || true
}
# orchc_rank_failure: ": rank R on node NODE exited with status S" for the rank of this job that ended first with
# a failure (the others were then stopped by srun), or nothing.
orchc_rank_failure() {
    local file status node
    [ -n "${ORCHC_RANKS:-}" ] && [ -d "$ORCHC_RANKS" ] || return 0
    # shellcheck disable=SC2012  # oldest first; the names are RANK.exit, digits (replica-I.exit: orchc_replicas_start)
    while read -r file; do
        read -r status node <"$ORCHC_RANKS/$file" 2>/dev/null && [ "$status" != 0 ] || continue
        file=${file%.exit}
        case $file in
            replica-*) printf ': replica %s on GPU %s exited with status %s' "${file#replica-}" "$node" "$status" ;;
            *) printf ': rank %s on node %s exited with status %s' "$file" "$node" "$status" ;;
        esac
        return 0
    done < <(ls -1tr "$ORCHC_RANKS" 2>/dev/null)
}

# orchc_seconds VALUE: fail unless VALUE is a whole number of seconds. Each helper checks its TIMEOUT before
# any arithmetic: bash evaluates a[$(cmd)] in $((...)), so a timeout is never used there unchecked.
orchc_seconds() {
    [[ $1 =~ ^[0-9]{1,9}$ ]] || orchc_fail "a timeout must be a whole number of seconds, not '${1:0:40}'"
}

# orchc_wait_tcp HOST PORT TIMEOUT: wait until HOST:PORT accepts connections.
orchc_wait_tcp() {
    orchc_seconds "$3"
    orchc_wait_log_checked
    local start=$SECONDS deadline=$((SECONDS + 10#$3)) next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30})) ORCHC_DELAY=2
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        orchc_service_alive
        [ "$SECONDS" -lt "$deadline" ] || orchc_fail "$1:$2 accepted no connection within $3 s"
        orchc_still_waiting "for $1:$2 to accept connections" "$start" "$3"
        orchc_backoff
    done
}

# orchc_wait_log_checked: ORCHC_WAIT_LOG (how often a wait says what it waits for, default 30 s) is a number before a wait
# uses it in arithmetic, where bash would run a $(...) inside it; anything else is 30.
orchc_wait_log_checked() { [[ ${ORCHC_WAIT_LOG:-30} =~ ^[1-9][0-9]{0,5}$ ]] || ORCHC_WAIT_LOG=30; }
# orchc_still_waiting WHAT START TIMEOUT [MORE]: every ORCHC_WAIT_LOG seconds (default 30; the caller's next_log), say what a wait
# that began at START (in $SECONDS) waits for, so that a long wait is never silent.
orchc_still_waiting() {
    [ "$SECONDS" -ge "$next_log" ] || return 0
    next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30}))
    orchc_log "still waiting $1: $((SECONDS - $2)) of $3 s${4:+ ($4)}"
}

# orchc_wait_http URL TIMEOUT: wait until URL answers with a success status (2xx, 3xx). Only while
# nothing answers (connection refused, reset, no reply within 10 s) or the answer is 503 Service
# Unavailable (a service still starting, e.g. Prometheus' /-/ready) does it keep waiting; any other
# HTTP error (404, 410, 500, ...) fails at once, naming the status and the start of the body.
orchc_wait_http() {
    orchc_seconds "$2"
    orchc_wait_log_checked
    local start=$SECONDS deadline=$((SECONDS + 10#$2)) next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30})) ORCHC_DELAY=2
    local answer="" code="" body="" last="no answer"
    command -v curl >/dev/null 2>&1 || orchc_fail "orchc_wait_http needs curl, which is not on PATH"
    while :; do
        # curl prints the body, a newline, then the status; it exits non-zero when nothing answered
        # (7: connection refused, 28: no reply in time, 52/56: closed or reset), never on an HTTP status
        if answer=$(curl -sS --max-time 10 -w '\n%{http_code}' "$1" 2>/dev/null); then
            code=${answer##*$'\n'}
            body=${answer%$'\n'*}
            body=${body:0:200}
            body=${body//[[:cntrl:]]/ }
        else
            code="curl exit status $?"
        fi
        case $code in
            [23][0-9][0-9]) return 0 ;;
            503) last="HTTP 503: $body" ;;
            [45][0-9][0-9]) orchc_fail "$1 answered HTTP $code: $body" ;;
            *) last="no answer, $code" ;;
        esac
        orchc_service_alive
        [ "$SECONDS" -lt "$deadline" ] || orchc_fail "$1 did not answer within $2 s (last: $last)"
        orchc_still_waiting "for $1 to answer" "$start" "$2" "last: $last"
        orchc_backoff
    done
}

# orchc_json_string TEXT: TEXT as a JSON string (backslash and quote escaped, control characters dropped).
orchc_json_string() {
    local text=$1
    text=${text//\\/\\\\}
    text=${text//\"/\\\"}
    text=${text//[$'\001'-$'\037']/}
    printf '"%s"' "$text"
}

# --- services ---

# orchc_publish_endpoint PORT...: tell clients where this service listens (written atomically). The file's first line
# is "ID HOST PORT...", all a client of one engine reads; a service with replicas (orchc_replicas_plan) adds a line
# "replica I HOST PORT GPU" per replica (orchc_endpoint_replicas reads them).
orchc_publish_endpoint() {
    local i host
    host=$(hostname)
    mkdir -p "$ORCHC_RUN_DIR/endpoints"
    ORCHC_ENDPOINT="$ORCHC_RUN_DIR/endpoints/$ORCHC_JOB"
    {
        printf '%s %s %s\n' "$(orchc_self_id)" "$host" "$*"
        for i in ${ORCHC_REPLICA_GPUS[@]+"${!ORCHC_REPLICA_GPUS[@]}"}; do
            printf 'replica %s %s %s %s\n' "$i" "$host" "${ORCHC_REPLICA_PORTS[i]}" "${ORCHC_REPLICA_GPUS[i]}"
        done
    } >"$ORCHC_ENDPOINT.tmp.$$"
    mv -f "$ORCHC_ENDPOINT.tmp.$$" "$ORCHC_ENDPOINT"
}
# orchc_endpoint_replicas FILE: TARGET_REPLICAS (HOST:PORT,...) and TARGET_REPLICA_GPUS (GPU,...) from the replica lines of an
# endpoint file (orchc_publish_endpoint); both empty for a service of one engine.
# shellcheck disable=SC2034  # TARGET_*: the job script exports them
orchc_endpoint_replicas() {
    local word i host port gpu
    TARGET_REPLICAS="" TARGET_REPLICA_GPUS=""
    while read -r word i host port gpu; do
        [ "$word" = replica ] && [[ $port =~ ^[0-9]{1,5}$ ]] || continue
        TARGET_REPLICAS+=${TARGET_REPLICAS:+,}$host:$port
        TARGET_REPLICA_GPUS+=${TARGET_REPLICA_GPUS:+,}$gpu
    done <"$1"
}

# orchc_phase PHASE [NUMBER]: phases/<job> in the run folder (written atomically), "ID PHASE EPOCH NUMBER": how far this
# service got, for its clients' wait (orchc_wait_endpoint) and orchc status: preparing (setup, images, downloads),
# starting (its readiness phase; NUMBER: its health_timeout), ended (NUMBER: its exit status). Ready is its endpoint.
orchc_phase() {
    local file="$ORCHC_RUN_DIR/phases/$ORCHC_JOB"
    mkdir -p "$ORCHC_RUN_DIR/phases" 2>/dev/null || return 0
    { printf '%s %s %s %s\n' "$(orchc_self_id)" "$1" "$(date +%s)" "${2:-0}" >"$file.tmp.$$" && mv -f "$file.tmp.$$" "$file"; } 2>/dev/null || true
}

# orchc_ports_free PORT...: fail, saying so, when another program already listens on one of this service's ports on this
# node (another run of the same recipe, say), before the service starts: otherwise the service cannot bind it, and its
# health check may even reach the other program and fail on something else (a TLS "unknown ca").
orchc_ports_free() {
    local port
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            orchc_fail "port $port on $(hostname) is already in use (by another program or run): give the service other ports in the recipe, or auto"
        fi
    done
}

# orchc_ports NAME...: the job's ports, each in ORCHC_PORT_NAME (the script assigns a number or auto; exported: the
# ranks' shells read them too), which its lines reference: auto becomes a free port of this node chosen now
# (orchc_free_ports), a fixed port is checked free. ORCHC_PORTS lists them (NAME=PORT) for messages.
orchc_ports() {
    local name variable auto=() chosen=() index
    for name in "$@"; do
        variable=ORCHC_PORT_$name
        if [ "${!variable}" = auto ]; then
            auto+=("$name")
        else
            orchc_ports_free "${!variable}"
            orchc_port_set "$name" "${!variable}"
        fi
    done
    if [ "${#auto[@]}" -gt 0 ]; then
        read -ra chosen <<<"$(orchc_free_ports "${#auto[@]}")"
        [ "${#chosen[@]}" = "${#auto[@]}" ] || orchc_fail "could not choose ${#auto[@]} free ports on $(hostname)"
        for index in "${!auto[@]}"; do
            orchc_port_set "${auto[index]}" "${chosen[index]}"
        done
    fi
    orchc_log "ports on $(hostname): ${ORCHC_PORTS:-}"
}
orchc_port_set() {
    [[ $2 =~ ^[1-9][0-9]{0,4}$ ]] || orchc_fail "'${2:0:20}' is not a port"
    printf -v "ORCHC_PORT_$1" %s "$2"
    export "ORCHC_PORT_$1"
    ORCHC_PORTS+="${ORCHC_PORTS:+ }$1=$2"
}
# orchc_free_ports COUNT: COUNT different ports no program of this node listens on, on one line: the kernel's choice for
# sockets bound to port 0, all held until the last is chosen (python3); without python3, random ports from 20000-32767
# (below Linux's ephemeral range) that accept no connection. Another program may still take one before the service
# binds it: the service then dies with "Address already in use", which orchc_bind_failure says.
orchc_free_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for sock in held:
    sock.bind(("", 0))
print(" ".join(str(sock.getsockname()[1]) for sock in held))' "$1"
        return
    fi
    local ports=() port tries=0
    while [ "${#ports[@]}" -lt "$1" ] && [ "$tries" -lt 1000 ]; do
        port=$((20000 + RANDOM % 12768)) tries=$((tries + 1))
        [[ " ${ports[*]} " != *" $port "* ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && ports+=("$port")
    done
    printf '%s\n' "${ports[*]}"
}
# orchc_fill_ports FILE PLACEHOLDER=NAME...: the port chosen for NAME (orchc_ports) in place of PLACEHOLDER in FILE (a file
# the job wrote from its type's template; only orchc's placeholders carry the job's token).
orchc_fill_ports() {
    local file=$1 pair variable
    shift
    for pair in "$@"; do
        variable=ORCHC_PORT_${pair##*=}
        [[ ${!variable:-} =~ ^[0-9]+$ ]] || orchc_fail "no port was chosen for ${pair##*=}"
        sed -i "s|${pair%=*}|${!variable}|g" "$file"
    done
}
# orchc_bind_failure: when the job's log says "Address already in use" (a port taken between orchc_ports and the
# service's start), that, plainly, for the message of a service that ended.
orchc_bind_failure() {
    local log
    for log in "$ORCHC_RUN_DIR/slurm-${SLURM_JOB_ID:-0}.err" "$ORCHC_RUN_DIR/slurm-${SLURM_JOB_ID:-0}.out"; do
        if [ -f "$log" ] && grep -q "Address already in use" "$log" 2>/dev/null; then
            printf ': its log (%s) says "Address already in use": another program took one of its ports (%s) on %s after orchc checked them; submit it again' \
                "${log##*/}" "${ORCHC_PORTS:-}" "$(hostname)"
            return 0
        fi
    done
}

# orchc_withdraw_endpoint: remove this job's endpoint file (not one a later job of the same name wrote).
orchc_withdraw_endpoint() {
    local file="$ORCHC_RUN_DIR/endpoints/$ORCHC_JOB" id=""
    if [ -f "$file" ] && read -r id _ <"$file" && [ "$id" = "$(orchc_self_id)" ]; then
        rm -f "$file"
    fi
}

# orchc_client_gone CLIENT [SELF]: whether CLIENT started against this service (it leaves
# done/<client>.<service id>.started with its own id, see orchc_self_id; with SELF "ended", done/<client>.running,
# orchc_mark_running) and has left the queue since.
orchc_client_gone() {
    local started id="" queued=0
    started="$ORCHC_RUN_DIR/done/$1.${2:-$(orchc_self_id)}.started"
    [ "${2:-}" != ended ] || started="$ORCHC_RUN_DIR/done/$1.running"
    [ -f "$started" ] && read -r id _ <"$started" && [ -n "$id" ] && [ "$id" != 0 ] || return 1
    orchc_in_queue "$id" || queued=$?
    [ "$queued" = 1 ]
}

# orchc_serve_until_done CLIENT...: serve until every client of this recipe that targets
# this job has finished (each leaves done/<client>.<service job id>), or the service exits.
# A client that left the queue without finishing (killed, node failure) counts as finished
# (asked of squeue every ORCHC_CLIENT_CHECK seconds, default 30). While clients run it looks at done/ ever more
# rarely, from 0.2 s up to every ORCHC_SERVE_EVERY seconds (default 10), napping in between (orchc_nap: no
# process per look), so that it stays out of the way of the load its clients put on this node.
orchc_serve_until_done() {
    orchc_serve_until_marked "$(orchc_self_id)" "$@"
}
# orchc_serve_until_recipe_done CLIENT...: the same for a job no client targets (the recipe's prometheus and grafana, a
# service nobody benchmarks): serve until every client of the recipe has ended (each leaves done/<client>.ended, and
# done/<client>.running with its own id as it starts), so that it does not hold its node to its time limit.
orchc_serve_until_recipe_done() {
    orchc_serve_until_marked ended "$@"
}
# orchc_serve_until_marked KEY CLIENT...: serve until each CLIENT has left done/<client>.KEY, or has left the queue since it
# started (orchc_client_gone).
orchc_serve_until_marked() {
    local client pending delay=2 every=${ORCHC_CLIENT_CHECK:-30} most=${ORCHC_SERVE_EVERY:-10} next_check self=$1
    shift
    next_check=$((SECONDS + every))
    while kill -0 "$ORCHC_SERVICE_PID" 2>/dev/null; do
        pending=0
        for client in "$@"; do
            [ -f "$ORCHC_RUN_DIR/done/$client.$self" ] && continue
            if [ "$SECONDS" -ge "$next_check" ] && orchc_client_gone "$client" "$self"; then
                orchc_log "client $client ended without finishing"
                : >"$ORCHC_RUN_DIR/done/$client.$self"
                continue
            fi
            pending=1
        done
        [ "$SECONDS" -lt "$next_check" ] || next_check=$((SECONDS + every))
        if [ "$pending" -eq 0 ]; then
            orchc_log "all clients finished; stopping"
            return 0
        fi
        orchc_nap "$((delay / 10)).$((delay % 10))"
        delay=$((delay * 2 > most * 10 ? most * 10 : delay * 2))
    done
    wait "$ORCHC_SERVICE_PID" || orchc_fail "the service exited with status $?$(orchc_rank_failure)"
}

# --- clients ---

# orchc_mark_started / orchc_mark_done: tell the target service this client has started / finished.
orchc_mark_started() {
    if [ -n "${TARGET_JOB_ID:-}" ]; then
        mkdir -p "$ORCHC_RUN_DIR/done"
        printf '%s\n' "$(orchc_self_id)" >"$ORCHC_RUN_DIR/done/$ORCHC_JOB.$TARGET_JOB_ID.started"
    fi
}
# A client that fails before it found its service's endpoint still releases it, through the job id
# `orchc submit` gave it (ORCHC_TARGET_JOB_ID).
orchc_mark_done() {
    local service=${TARGET_JOB_ID:-${ORCHC_TARGET_JOB_ID:-}}
    mkdir -p "$ORCHC_RUN_DIR/done"
    if [ -n "$service" ]; then
        : >"$ORCHC_RUN_DIR/done/$ORCHC_JOB.$service"
    fi
    # for the jobs no client targets (orchc_serve_until_recipe_done)
    : >"$ORCHC_RUN_DIR/done/$ORCHC_JOB.ended"
}
# orchc_mark_running: tell the jobs no client targets that this client runs (and by which id, if it vanishes).
orchc_mark_running() {
    mkdir -p "$ORCHC_RUN_DIR/done"
    printf '%s\n' "$(orchc_self_id)" >"$ORCHC_RUN_DIR/done/$ORCHC_JOB.running"
}

# orchc_mark_stopped REASON: why the benchmark was stopped (duration, time_limit, SIGTERM, ...); the first reason stays.
orchc_mark_stopped() {
    mkdir -p "$ORCHC_RESULTS"
    [ -e "$ORCHC_RESULTS/stopped" ] || printf '%s\n' "$1" >"$ORCHC_RESULTS/stopped"
}
orchc_stopped_by() {
    local reason=""
    [ -f "$ORCHC_RESULTS/stopped" ] && read -r reason <"$ORCHC_RESULTS/stopped"
    printf '%s' "$reason"
}

# orchc_limit_duration PID SECONDS: stop the benchmark PID (and everything under it) once it has run
# SECONDS, the client's duration. The processes are listed first and stopped from the top down, so the
# benchmark's shell goes before it could report its programs' deaths as failures.
orchc_limit_duration() {
    (
        trap - EXIT TERM INT USR1 ERR
        set +o errexit
        # the sleep holds no output of the job: killed with its watcher or not, it keeps no pipe open
        sleep "$2" >/dev/null 2>&1
        kill -0 "$1" 2>/dev/null || exit 0
        orchc_mark_stopped duration
        orchc_log "duration of $2 s reached: stopping the benchmark"
        for pid in $(orchc_tree "$1"); do kill -TERM "$pid" 2>/dev/null; done
    ) </dev/null &
    ORCHC_WATCHERS+=("$!")
}
# orchc_tree PID: PID and the processes under it, parents before children.
orchc_tree() {
    local child
    printf '%s\n' "$1"
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        orchc_tree "$child"
    done
}

# --- orchc's own CPU during the benchmark (the observer's cost) ---

# orchc_cpu_ticks: "PID TICKS" for this job's own processes: the batch shell (its own time only: its children's
# includes the benchmark once it is reaped) and every process under it outside the benchmark's tree (watchers
# with the sleeps they reaped, sidecars, samplers). TICKS is user + system time, children's included, in clock ticks.
orchc_cpu_ticks() {
    local pid stat fields
    for pid in $(orchc_tree "$$"); do
        # not the shell that measures (a $(...) of the batch shell), nor a process that ended since orchc_tree listed it
        [ "$pid" != "$BASHPID" ] || continue
        read -r stat 2>/dev/null <"/proc/$pid/stat" || continue
        # the fields after the command name, which may hold spaces and parentheses: state is the first
        read -ra fields <<<"${stat##*) }"
        if [ "$pid" = "$$" ]; then
            printf '%s %s\n' "$pid" "$((fields[11] + fields[12]))"
        elif ! orchc_in_benchmark "$pid"; then
            printf '%s %s\n' "$pid" "$((fields[11] + fields[12] + fields[13] + fields[14]))"
        fi
    done
}
# orchc_in_benchmark PID: whether PID is the benchmark (ORCHC_BENCH_PID) or runs under it.
orchc_in_benchmark() {
    local pid=$1 stat fields
    while [ -n "$pid" ] && [ "$pid" -gt 1 ] && [ "$pid" != "$$" ]; do
        [ "$pid" != "${ORCHC_BENCH_PID:-}" ] || return 0
        read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
        read -ra fields <<<"${stat##*) }"
        pid=${fields[1]}
    done
    return 1
}
orchc_uptime() { local up _; read -r up _ </proc/uptime && printf '%s' "${up/./}"; }

# orchc_observer_start / orchc_observer_stop: the benchmark window, and what orchc's own processes used of the CPU
# in it (orchc_cpu_ticks at both ends, per process; a process that ended in it counts in the helper that reaped
# it). orchc_results adds orchc_cpu_s, orchc_window_s and orchc_cpu_percent (of one core) to the metrics.
orchc_observer_start() {
    [ -r /proc/uptime ] || return 0
    ORCHC_OBSERVED_FROM=$(orchc_uptime)
    ORCHC_OBSERVED_TICKS=$(orchc_cpu_ticks)
}
orchc_observer_stop() {
    [ -n "${ORCHC_OBSERVED_FROM:-}" ] && [ -z "${ORCHC_OBSERVED:-}" ] || return 0
    local until pid ticks before total=0 hz
    until=$(orchc_uptime)
    while read -r pid ticks; do
        before=$(awk -v pid="$pid" '$1 == pid { print $2 }' <<<"$ORCHC_OBSERVED_TICKS")
        total=$((total + ticks - ${before:-0}))
    done < <(orchc_cpu_ticks)
    hz=$(getconf CLK_TCK 2>/dev/null) || hz=100
    ORCHC_OBSERVED=$(awk -v ticks="$total" -v hz="$hz" -v from="$ORCHC_OBSERVED_FROM" -v until="$until" 'BEGIN {
        window = (until - from) / 100; cpu = ticks / hz
        printf "\"orchc_cpu_s\": %.3f, \"orchc_window_s\": %.2f, \"orchc_cpu_percent\": %s", cpu, window,
            (window > 0 ? sprintf("%.3f", 100 * cpu / window) : "null") }')
}

# orchc_parameter NAME VALUE: a parameter the job learns as it runs (e.g. the transport it measured over), added to
# the parameters of its results.json (NAME, a word; VALUE, a string).
orchc_parameter() {
    local file="$ORCHC_RESULTS/parameters.json" known="{}"
    mkdir -p "$ORCHC_RESULTS"
    [ ! -f "$file" ] || known=$(orchc_flat_json "$file" scalars) || known="{}"
    [ "$known" = "{}" ] && known="{" || known="${known%\}}, "
    printf '%s%s: %s}\n' "$known" "$(orchc_json_string "$1")" "$(orchc_json_string "$2")" >"$file.tmp"
    mv -f "$file.tmp" "$file"
}

# orchc_publish_facts NAME=VALUE...: facts of how this service runs (e.g. where its data lies), which its clients
# record in their results (orchc_target_facts); written atomically, before the endpoint.
orchc_publish_facts() {
    local pair file="$ORCHC_RUN_DIR/facts/$ORCHC_JOB"
    mkdir -p "$ORCHC_RUN_DIR/facts"
    for pair in "$@"; do printf '%s %s\n' "${pair%%=*}" "${pair#*=}"; done >"$file.tmp.$$"
    mv -f "$file.tmp.$$" "$file"
}

# orchc_target_facts: the facts the client's target published (TARGET_FACTS), each a parameter target_NAME.
orchc_target_facts() {
    local name value
    [ -n "${TARGET_FACTS:-}" ] && [ -f "$TARGET_FACTS" ] || return 0
    while read -r name value; do
        if [[ $name =~ ^[a-z][a-z0-9_]{0,40}$ ]]; then orchc_parameter "target_$name" "$value"; fi
    done <"$TARGET_FACTS"
}

# orchc_mysql_settings ROW: record in the results' parameters what a MySQL server runs with, from ROW, its answer
# (tab-separated) to SELECT @@datadir, @@innodb_buffer_pool_size, @@innodb_flush_log_at_trx_commit, @@log_bin, @@sync_binlog.
orchc_mysql_settings() {
    local datadir="" pool="" flush="" binlog="" sync=""
    IFS=$'\t' read -r datadir pool flush binlog sync <<<"$1" || true
    [ -n "$pool" ] || { orchc_log "the server did not say its settings"; return 0; }
    orchc_parameter server_datadir "$datadir"
    orchc_parameter server_innodb_buffer_pool_size "$pool"
    orchc_parameter server_innodb_flush_log_at_trx_commit "$flush"
    orchc_parameter server_log_bin "$binlog"
    orchc_parameter server_sync_binlog "$sync"
}

# orchc_flat_json FILE KIND: FILE's JSON object on one line, if it is flat (no nesting) and its values are of
# KIND (numbers: numbers and null; scalars: also strings and booleans); nothing and status 1 otherwise.
orchc_flat_json() {
    [ -f "$1" ] && [ "$(wc -c <"$1")" -le 1048576 ] || return 1
    LC_ALL=C awk -v kind="$2" '
        { text = text $0 " " }
        function take(pattern) {
            if (!match(text, "^[ \t\r]*" pattern)) return 0
            token = substr(text, RSTART, RLENGTH); sub(/^[ \t\r]*/, "", token)
            text = substr(text, RSTART + RLENGTH)
            return 1
        }
        END {
            string = "\"([^\"\\\\[:cntrl:]]|\\\\[\"\\\\/bfnrt]|\\\\u[0-9A-Fa-f]{4})*\""
            number = "-?(0|[1-9][0-9]*)([.][0-9]+)?([eE][+-]?[0-9]+)?"
            value = kind == "numbers" ? "(" number "|null)" : "(" number "|null|true|false|" string ")"
            if (!take("[{]")) exit 1
            out = "{"
            if (!take("[}]")) {
                do {
                    if (!take(string)) exit 1
                    key = token
                    if (!take(":") || !take(value)) exit 1
                    out = out (out == "{" ? "" : ", ") key ": " token
                } while (take(","))
                if (!take("[}]")) exit 1
            }
            if (text !~ /^[ \t\r]*$/) exit 1
            print out "}"
        }' "$1"
}

# orchc_results TOOL: write results.json, the one shape every client's results take: the metrics its
# results phase left in metrics.json (flat: name -> number, the unit at the end of the name), facts from
# environment.json, how the benchmark ended, the job's parameters, its images, and the raw files beside.
orchc_results() {
    local tool=null metrics="{}" environment="{}" status=complete stopped error=null raw="" name images=null parameters learnt
    [ -z "$1" ] || tool=$(orchc_json_string "$1")
    mkdir -p "$ORCHC_RESULTS"
    stopped=$(orchc_stopped_by)
    if [ -f "$ORCHC_RESULTS/metrics.json" ]; then
        metrics=$(orchc_flat_json "$ORCHC_RESULTS/metrics.json" numbers) ||
            { metrics="{}"; orchc_error "metrics.json is not a flat JSON object of numbers"; ORCHC_STATUS=1; }
    fi
    if [ -n "${ORCHC_OBSERVED:-}" ]; then
        [ "$metrics" = "{}" ] && metrics="{$ORCHC_OBSERVED}" || metrics="${metrics%\}}, $ORCHC_OBSERVED}"
    fi
    parameters=$ORCHC_PARAMETERS
    if [ -f "$ORCHC_RESULTS/parameters.json" ] && learnt=$(orchc_flat_json "$ORCHC_RESULTS/parameters.json" scalars) &&
        [ "$learnt" != "{}" ]; then
        [ "$parameters" = "{}" ] && parameters=$learnt || parameters="${parameters%\}}, ${learnt#\{}"
    fi
    if [ -f "$ORCHC_RESULTS/environment.json" ]; then
        environment=$(orchc_flat_json "$ORCHC_RESULTS/environment.json" scalars) ||
            { environment="{}"; orchc_error "environment.json is not a flat JSON object"; ORCHC_STATUS=1; }
    fi
    if [ -n "$stopped" ]; then
        status=partial
    elif [ "${ORCHC_STATUS:-0}" -ne 0 ]; then
        status=failed
    fi
    if [ "$status" != complete ] && [ -f "$ORCHC_RESULTS/error" ]; then
        error=$(orchc_json_string "$(head -c 2000 "$ORCHC_RESULTS/error")")
    fi
    for name in "$ORCHC_RESULTS"/*; do
        name=${name##*/}
        case $name in
            '*' | results.json | metrics.json | environment.json | parameters.json | stopped | error | *.tmp) ;;
            *) raw+="${raw:+, }$(orchc_json_string "$name")" ;;
        esac
    done
    if [ -f "$ORCHC_RUN_DIR/images/$ORCHC_JOB.json" ]; then
        images=$(head -c 65536 "$ORCHC_RUN_DIR/images/$ORCHC_JOB.json")
    fi
    {
        printf '{"schema": "orchc-results/1", "tool": %s, "job": %s, "type": %s, ' \
            "$tool" "$(orchc_json_string "$ORCHC_JOB")" "$(orchc_json_string "$ORCHC_TYPE")"
        printf '"run": %s, "slurm_job_id": %s, ' \
            "$(orchc_json_string "${ORCHC_RUN_DIR##*/}")" "$(orchc_json_string "${SLURM_JOB_ID:-}")"
        printf '"status": "%s", "partial": %s, "stopped_by": %s, "error": %s,\n' "$status" \
            "$([ "$status" = partial ] && echo true || echo false)" \
            "$([ -n "$stopped" ] && orchc_json_string "$stopped" || echo null)" "$error"
        printf ' "metrics": %s,\n' "$metrics"
        printf ' "parameters": %s,\n' "$parameters"
        printf ' "environment": {"node": %s, "images": %s, "reported": %s},\n' \
            "$(orchc_json_string "$(hostname)")" "$images" "$environment"
        printf ' "raw": [%s]}\n' "$raw"
    } >"$ORCHC_RESULTS/results.json.tmp"
    mv -f "$ORCHC_RESULTS/results.json.tmp" "$ORCHC_RESULTS/results.json"
    [ "$status" != failed ]
}

# orchc_wait_endpoint SERVICE TIMEOUT: wait for SERVICE's endpoint; sets TARGET_HOST and TARGET_PORT. The wait follows
# what the service is doing (its phases/<job>, orchc_phase, and with ORCHC_TARGET_JOB_ID its SLURM state): while it is
# queued or preparing (setup, images, downloads: as long as that takes), TIMEOUT does not run; it runs from the moment the
# service starts its readiness phase, and is then at least the service's own health_timeout, so a client never gives up
# on a service that has not. A service that ended stops the wait at once, naming it. Without a phase file or a SLURM
# state saying otherwise (a service of an older runtime, a run by hand) TIMEOUT runs from the start, as it always did.
# With ORCHC_TARGET_JOB_ID set (orchc submit sets it to the service's job id; allocation.sbatch to ALLOCATION.SERVICE,
# see orchc_self_id), only that job's files count; squeue is asked after 5 s, then ever more rarely, at most every 60 s.
# Every ORCHC_WAIT_LOG seconds (default 30) it logs what it waits for and the service's state.
# shellcheck disable=SC2034  # TARGET_*: the job script exports them
orchc_wait_endpoint() {
    orchc_seconds "$2"
    orchc_wait_log_checked
    local file="$ORCHC_RUN_DIR/endpoints/$1" next_check=$((SECONDS + 5)) every=5 jobid host port
    local budget=$((10#$2)) used=0 last=$SECONDS counting=1 phase="" health="" state="" phase_id="" said="" ORCHC_DELAY=2
    local next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30})) service="service $1${ORCHC_TARGET_JOB_ID:+ (job $ORCHC_TARGET_JOB_ID)}"
    orchc_log "waiting for $service to publish its endpoint in $file"
    while :; do
        if [ -n "${ORCHC_TARGET_JOB_ID:-}" ] && [ "$SECONDS" -ge "$next_check" ]; then
            every=$((every * 2 > 60 ? 60 : every * 2))
            next_check=$((SECONDS + every))
            state=$(orchc_queue_state "$ORCHC_TARGET_JOB_ID") || state="unknown"
            if orchc_ended_state "$state" && [ ! -f "$file" ]; then
                orchc_error "the client stopped$(orchc_where): $service ended without publishing an endpoint${state:+ (SLURM state $state)}; why is in its log, $ORCHC_RUN_DIR/slurm-${ORCHC_TARGET_JOB_ID%%.*}.err"
                exit 1
            fi
        fi
        if [ -f "$file" ] && read -r jobid host port _ <"$file" &&
            { [ -z "${ORCHC_TARGET_JOB_ID:-}" ] || [ "$jobid" = "$ORCHC_TARGET_JOB_ID" ]; }; then
            TARGET_HOST=$host
            TARGET_PORT=$port
            TARGET_JOB_ID=$jobid
            orchc_endpoint_replicas "$file"
            # where the service left the credentials its clients need, if it needs any (orchc_tls_credentials)
            TARGET_CREDENTIALS="$ORCHC_RUN_DIR/credentials/$1"
            # what the service said about how it runs (orchc_publish_facts), for its clients' results
            TARGET_FACTS="$ORCHC_RUN_DIR/facts/$1"
            return 0
        fi
        orchc_target_phase "$1"
        case $phase in
            ended)
                orchc_error "the client stopped$(orchc_where): $service ended without publishing an endpoint (exit status $health); why is in its log, $ORCHC_RUN_DIR/slurm-${phase_id%%.*}.err"
                exit 1
                ;;
            starting) [ "$said" = starting ] || {
                budget=$((health > budget ? health : budget))
                orchc_log "$service is starting (its health check may take $health s): waiting at most $((budget - used)) s more"
                said=starting; } ;;
        esac
        [ "$counting" = 0 ] || used=$((used + SECONDS - last))
        last=$SECONDS
        # the budget runs unless the service is known to be queued or preparing
        counting=1
        [ "$state" != PENDING ] && [ "$phase" != preparing ] || counting=0
        [ "$used" -lt "$budget" ] || orchc_fail "$service published no endpoint within $budget s${phase:+ of starting} (state: ${phase:-${state:-unknown}}; is it running? squeue --me)"
        if [ "$SECONDS" -ge "$next_log" ]; then
            next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30}))
            orchc_log "still waiting for $service: ${phase:-no phase yet}, SLURM state ${state:-not asked}; $used of $budget s of its budget used"
        fi
        orchc_backoff
    done
}

# orchc_target_phase SERVICE: set phase and health (the caller's locals) from SERVICE's phases/<job> (orchc_phase), when it is
# the target job's (ORCHC_TARGET_JOB_ID, if set); phase empty otherwise.
orchc_target_phase() {
    local what="" _at="" number=""
    phase="" phase_id=""
    [ -f "$ORCHC_RUN_DIR/phases/$1" ] && read -r phase_id what _at number <"$ORCHC_RUN_DIR/phases/$1" || return 0
    [ -z "${ORCHC_TARGET_JOB_ID:-}" ] || [ "$phase_id" = "$ORCHC_TARGET_JOB_ID" ] || return 0
    [[ $number =~ ^[0-9]{1,9}$ ]] || number=0
    case $what in preparing | starting | ended) phase=$what health=$((10#$number)) ;; esac
}

# orchc_job_host JOBID TIMEOUT: set TARGET_HOST to the address of the first node of the job JOBID once it runs: its
# NodeAddr, where SLURM itself reaches it (the node's name when the site sets no NodeAddr; a name that need not resolve
# when it does, as on the test cluster, whose nodes n1..n4 are all 127.0.0.1). While the job is queued (PENDING)
# TIMEOUT does not run; a job that has ended, or is not in the queue, stops the wait at once.
# shellcheck disable=SC2034  # TARGET_HOST: the job script exports it
orchc_job_host() {
    orchc_seconds "$2"
    orchc_wait_log_checked
    local used=0 last=$SECONDS answer state nodes node addr next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30})) ORCHC_DELAY=20
    while :; do
        answer=$(squeue -h -j "$1" -o '%T %N' 2>/dev/null) || answer="unknown"
        state="" nodes=""
        read -r state nodes <<<"$answer" || true
        if [ "$state" = RUNNING ] && [ -n "$nodes" ]; then
            node=$(scontrol show hostnames "$nodes") || node=${nodes%%,*}
            node=${node%%$'\n'*}   # the first; no `| head`, whose early close would fail the pipe
            addr=$(scontrol show node -o "$node" 2>/dev/null | grep -o ' NodeAddr=[^ ]*') || addr=""
            addr=${addr#*=}
            TARGET_HOST=${addr:-$node}
            return 0
        fi
        ! orchc_ended_state "$state" || orchc_fail "job $1 is not running: ${state:-it is not in the queue} (squeue -j $1)"
        [ "$state" = PENDING ] || used=$((used + SECONDS - last))
        last=$SECONDS
        [ "$used" -lt "$((10#$2))" ] || orchc_fail "job $1 is not running (squeue -j $1 says ${state:-nothing})"
        if [ "$SECONDS" -ge "$next_log" ]; then
            next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30}))
            orchc_log "still waiting for job $1 to run: $state; $used of $2 s of the budget used (queued time does not count)"
        fi
        orchc_backoff
    done
}

# --- what some jobs need ---

# orchc_tls_credentials DIR: a certificate authority of this job alone, and a server and a client
# certificate it signed, in DIR (mode 0700, replaced if present): ca.crt, server.{crt,key}, client.{crt,key}.
# The service requires the client certificate (mutual TLS), so only holders of DIR reach it: its clients
# in this run find DIR as $TARGET_CREDENTIALS. The CA's key is deleted once both are signed.
orchc_tls_credentials() {
    local dir=$1 host
    host=$(hostname)
    rm -rf "$dir"
    { mkdir -p "$dir" && chmod 0700 "$dir"; } || orchc_fail "cannot create $dir"
    command -v openssl >/dev/null 2>&1 || orchc_fail "openssl is not on PATH: it makes the service's TLS certificates"
    (
        umask 077
        cd "$dir"
        orchc_tls_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"; }
        orchc_tls_key ca
        openssl req -x509 -new -key ca.key -days 30 -subj "/CN=orchc $ORCHC_JOB ${SLURM_JOB_ID:-0}" -out ca.crt
        for who in server client; do
            orchc_tls_key "$who"
            openssl req -new -key "$who.key" -subj "/CN=$host" -out "$who.csr"
            printf 'subjectAltName = DNS:%s, DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = %sAuth\n' \
                "$host" "$who" >"$who.ext"
            openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
                -extfile "$who.ext" -out "$who.crt"
        done
        rm -f ca.key ca.srl ./*.csr ./*.ext
    ) >"$dir.log" 2>&1 || orchc_fail "openssl could not make the TLS certificates in $dir: $(tail -n 3 "$dir.log")"
    rm -f "$dir.log"
}

# orchc_host_of JOB TIMEOUT: the host of another service of this run, once it has published its endpoint. It says what it
# waits for every ORCHC_WAIT_LOG seconds (default 30), and stops at once when JOB has ended (its phases/<job>).
orchc_host_of() {
    orchc_seconds "$2"
    orchc_wait_log_checked
    local file="$ORCHC_RUN_DIR/endpoints/$1" start=$SECONDS deadline=$((SECONDS + 10#$2)) next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30}))
    local host phase="" health="" phase_id="" ORCHC_DELAY=2
    while ! { [ -f "$file" ] && read -r _ host _ <"$file"; }; do
        [ "$SECONDS" -lt "$deadline" ] || orchc_fail "service $1 published no endpoint within $2 s"
        ORCHC_TARGET_JOB_ID="" orchc_target_phase "$1"
        [ "$phase" != ended ] || orchc_fail "service $1 ended (exit status $health) without publishing an endpoint"
        orchc_still_waiting "for the host of service $1" "$start" "$2" "${phase:-no phase yet}"
        orchc_backoff
    done
    printf '%s\n' "$host"
}

# orchc_shipped_file NAME SHA256 PATH: put at PATH the program a type ships, NAME in the run folder (written
# there with the job scripts), once the copy made beside PATH has SHA256: a missing or changed file stops the job.
orchc_shipped_file() {
    local temp
    mkdir -p "$(dirname "$3")"
    temp="$3.orchc-tmp.$$"
    if ! cat -- "$ORCHC_RUN_DIR/$1" >"$temp" 2>/dev/null || [ "$(sha256sum <"$temp")" != "$2  -" ]; then
        rm -f -- "$temp"
        orchc_fail "the file $ORCHC_RUN_DIR/$1 is missing or changed (its sha256 must be $2): compile the recipe again into the run folder"
    fi
    mv -f -- "$temp" "$3"
}

# orchc_fill_hosts FILE PLACEHOLDER=JOB...: put the hosts of other services of this run into a generated file, waiting
# for each (orchc_host_of).
orchc_fill_hosts() {
    local file=$1 pair host
    shift
    for pair in "$@"; do
        orchc_log "waiting for the host of ${pair##*=}"
        host=$(orchc_host_of "${pair##*=}" 3600)
        orchc_put_host "$file" "${pair%=*}" "$host"
    done
}
# orchc_put_host FILE PLACEHOLDER HOST: HOST in place of PLACEHOLDER in FILE.
orchc_put_host() {
    local placeholder=${2//./\\.} host=${3//[\\|&]/}
    sed -i "s|$placeholder|$host|g" "$1"
}

# orchc_fill_hosts_later FILE PLACEHOLDER=JOB...: FILE.orchc-pending (a file item with hosts: later) becomes FILE, renamed
# into place whole, once the hosts of the jobs it names are in; the job does not wait for them. Hosts published already
# go in at once; for the others a background filler (stopped with the job) looks at their endpoints, at most every 5 s,
# and says every ORCHC_WAIT_LOG seconds (default 30) which it still waits for. A program that watches FILE (Prometheus'
# file discovery) picks the targets up as they appear.
orchc_fill_hosts_later() {
    local file=$1
    shift
    if orchc_put_hosts_known "$file" "$@"; then
        return 0
    fi
    orchc_log "$file appears once the endpoints of $(orchc_jobs_of "$@") are published; $ORCHC_JOB goes on"
    (
        trap - EXIT TERM INT USR1 ERR
        set +o errexit
        orchc_wait_log_checked
        local start=$SECONDS next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30})) ORCHC_DELAY=2
        until orchc_put_hosts_known "$file" "$@"; do
            orchc_still_waiting "for the endpoints of $(orchc_jobs_of "$@") (for $file)" "$start" "the job's time limit"
            orchc_backoff
        done
        orchc_log "$file written: every host in it is known"
    ) </dev/null &
    orchc_started "$!"
}
# orchc_grafana_reload_later PORT FILE: when FILE, Grafana's provisioned data sources, waits for the hosts of the jobs it
# names (FILE.orchc-pending, orchc_fill_hosts_later), ask the Grafana on PORT to read its data sources again once FILE is
# written (its admin API; the password, $ADMIN_PASSWORD, reaches curl through its config on stdin, never a command line).
# In the background: the job goes on, and says every ORCHC_WAIT_LOG seconds (default 30) that it still waits.
orchc_grafana_reload_later() {
    [ -f "$2.orchc-pending" ] || return 0
    (
        trap - EXIT TERM INT USR1 ERR
        set +o errexit
        orchc_wait_log_checked
        local start=$SECONDS next_log=$((SECONDS + ${ORCHC_WAIT_LOG:-30})) ORCHC_DELAY=2 password
        until [ -f "$2" ]; do
            orchc_still_waiting "for $2 (the hosts of Grafana's data sources)" "$start" "the job's time limit"
            orchc_backoff
        done
        password=${ADMIN_PASSWORD//\\/\\\\}
        password=${password//\"/\\\"}
        if printf 'user = "admin:%s"\n' "$password" | curl -sS -f --max-time 30 -K - -X POST \
            "http://127.0.0.1:$1/api/admin/provisioning/datasources/reload" >/dev/null; then
            orchc_log "Grafana read its data sources again: $2"
        else
            orchc_log "Grafana did not read its data sources again (POST /api/admin/provisioning/datasources/reload failed)"
        fi
    ) </dev/null &
    orchc_started "$!"
}
# orchc_put_hosts_known FILE PLACEHOLDER=JOB...: when every JOB has published its endpoint, write FILE.orchc-pending with their
# hosts put in as FILE (atomically); status 1, and FILE untouched, while one has not.
orchc_put_hosts_known() {
    local file=$1 pair host temp
    shift
    for pair in "$@"; do
        [ -f "$ORCHC_RUN_DIR/endpoints/${pair##*=}" ] && read -r _ host _ <"$ORCHC_RUN_DIR/endpoints/${pair##*=}" && [ -n "$host" ] || return 1
    done
    temp="$file.tmp.$BASHPID"
    cp -- "$file.orchc-pending" "$temp" || return 1
    for pair in "$@"; do
        read -r _ host _ <"$ORCHC_RUN_DIR/endpoints/${pair##*=}"
        orchc_put_host "$temp" "${pair%=*}" "$host"
    done
    mv -f -- "$temp" "$file"
}
# orchc_jobs_of PLACEHOLDER=JOB...: the jobs, comma-separated.
orchc_jobs_of() {
    local pair out=""
    for pair in "$@"; do out+="${out:+, }${pair##*=}"; done
    printf '%s' "$out"
}

# orchc_secret_file PATH: print the secret kept in PATH, creating a random one (mode 0600) if missing.
# A secret that is not a regular file of this user with mode 0600, or is empty, stops the job.
orchc_secret_file() {
    if [ ! -e "$1" ] && [ ! -L "$1" ]; then
        local temp="$1.tmp.$$"
        mkdir -p "$(dirname "$1")"
        (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$temp") || orchc_fail "cannot create $1"
        # ln fails if another job created the file meanwhile: both then use the first one.
        ln "$temp" "$1" 2>/dev/null || true
        rm -f "$temp"
    fi
    [ -f "$1" ] && [ ! -L "$1" ] || orchc_fail "secret file $1 is not a regular file"
    [ -O "$1" ] || orchc_fail "secret file $1 does not belong to $(id -un)"
    [ "$(stat -c %a "$1")" = 600 ] || orchc_fail "secret file $1 must have mode 0600 (chmod 600 $1)"
    [ -s "$1" ] || orchc_fail "secret file $1 is empty"
    cat "$1"
}

# orchc_pass_into_containers NAME...: pass each NAME that is set into this job's containers, which run with
# --cleanenv: as APPTAINERENV_NAME (SINGULARITYENV_NAME; the runtime sets NAME in the container from it), so no value is on a command line.
orchc_pass_into_containers() {
    local name cli=${ORCHC_CONTAINER_CLI:-apptainer}
    for name in "$@"; do
        if [ -n "${!name+set}" ]; then
            export "${cli^^}ENV_$name=${!name}"
        fi
    done
}

# orchc_image SIF SOURCE: check that SIF is the image `orchc prepare` built from SOURCE, and record it for the run.
# Jobs never build: that happens once on the login node (orchc prepare, which orchc submit runs first), not on a
# billed node with Apptainer's cache on the parallel file system. A missing image, one built from another source,
# or one whose sha256 is not the one recorded in SIF.sha256 when it was prepared stops the job, saying which. The
# file is read (hashed) only when its size, modification time or inode differ from those prepare recorded in SIF.stat.
# The job's images are listed in $ORCHC_RUN_DIR/images/$ORCHC_JOB.json (with the manifest digest of a source
# pinned as docker://...@sha256:...).
orchc_image() {
    local sif=$1 source=$2 name built recorded digest file manifest=""
    name=${sif##*/}
    name=${name%.sif}
    [ -f "$sif" ] || orchc_fail "image $sif is missing: run orchc prepare RECIPE on the login node (orchc submit runs it first)"
    built=$(cat "$sif.source" 2>/dev/null) || built="an unknown source (no $sif.source)"
    [ "$built" = "$source" ] || orchc_fail "image $sif was built from $built, not $source: run orchc prepare RECIPE on the login node"
    read -r recorded _ 2>/dev/null <"$sif.sha256" || orchc_fail "image $sif has no recorded digest ($sif.sha256): run orchc prepare RECIPE on the login node"
    if [ -f "$sif.stat" ] && [ "$(stat -c '%s %Y %i' -- "$sif")" = "$(cat "$sif.stat")" ]; then
        digest=$recorded    # the file prepare hashed, untouched since (size, modification time, inode)
    else
        digest=$(sha256sum <"$sif")
        digest=${digest%% *}
    fi
    [ "$digest" = "$recorded" ] || orchc_fail "image $sif is not the one prepared: its sha256 is $digest, $sif.sha256 records $recorded (changed since): run orchc prepare RECIPE again"
    [[ $source != *@sha256:* ]] || manifest=", \"manifest_digest\": $(orchc_json_string "sha256:${source##*@sha256:}")"
    ORCHC_IMAGES+="${ORCHC_IMAGES:+, }{\"image\": $(orchc_json_string "$name"), \"source\": $(orchc_json_string "$source"),"
    ORCHC_IMAGES+=" \"path\": $(orchc_json_string "$sif"), \"sha256\": $(orchc_json_string "$digest")$manifest}"
    mkdir -p "$ORCHC_RUN_DIR/images"
    file="$ORCHC_RUN_DIR/images/$ORCHC_JOB.json"
    printf '[%s]\n' "$ORCHC_IMAGES" >"$file.tmp.$$"
    mv -f "$file.tmp.$$" "$file"
}

# orchc_publish_metrics RECIPE SOURCE=PORT...: tell the run's Prometheus where this job serves metrics,
# for its file-based service discovery: monitoring/<job>.json in the run folder, one target group per
# port (labels job, orchc_recipe, orchc_source, orchc_slurm_job), written atomically. A holder process,
# stopped like everything the job started (and by its watcher if the batch shell is killed outright),
# removes the file when the job ends. Without SOURCE=PORT pairs nothing is written.
orchc_publish_metrics() {
    local recipe pair groups="" host file
    recipe=$(orchc_json_string "$1")
    shift
    [ "$#" -gt 0 ] || return 0
    host=$(hostname)
    for pair in "$@"; do
        groups+="${groups:+, }{\"targets\": [\"$host:${pair##*=}\"], \"labels\": {\"job\": $(orchc_json_string "$ORCHC_JOB"),"
        groups+=" \"orchc_recipe\": $recipe, \"orchc_source\": $(orchc_json_string "${pair%%=*}"),"
        groups+=" \"orchc_slurm_job\": \"${SLURM_JOB_ID:-0}\"}}"
    done
    mkdir -p "$ORCHC_RUN_DIR/monitoring"
    file="$ORCHC_RUN_DIR/monitoring/$ORCHC_JOB.json"
    printf '[%s]\n' "$groups" >"$file.tmp.$$"
    mv -f "$file.tmp.$$" "$file"
    orchc_log "metrics of $ORCHC_JOB published in $file"
    (
        trap - EXIT INT USR1 ERR
        set +o errexit
        trap 'orchc_withdraw_metrics; exit 0' TERM
        # stopped by the job's end (its TERM trap), or else by the job's watcher; it looks itself only once a minute
        while kill -0 "$$" 2>/dev/null; do orchc_nap 60; done
        orchc_withdraw_metrics
    ) >/dev/null 2>&1 </dev/null &
    orchc_started "$!"
}

# orchc_withdraw_metrics: remove this job's discovery file (not one a later job of the same name wrote).
orchc_withdraw_metrics() {
    local file="$ORCHC_RUN_DIR/monitoring/$ORCHC_JOB.json"
    if [ -f "$file" ] && grep -qF "\"orchc_slurm_job\": \"${SLURM_JOB_ID:-0}\"" "$file"; then
        rm -f "$file"
    fi
}

# orchc_gpu_exporter KIND PORT [PROGRAM]: serve this node's GPU metrics to Prometheus on PORT until the job ends,
# on the host (nvidia-smi and DCGM are host programs): KIND nvidia-smi runs orchc's PROGRAM (gpu_exporter.py) with
# python3, dcgm runs NVIDIA's dcgm-exporter. Without the program the node lacks, it says so and the job goes on.
orchc_gpu_exporter() {
    if [ "$1" = dcgm ]; then
        command -v dcgm-exporter >/dev/null 2>&1 || { orchc_log "no dcgm-exporter on $(hostname): no GPU exporter"; return 0; }
        setsid dcgm-exporter --address ":$2" </dev/null >/dev/null 2>&1 &
    else
        command -v python3 >/dev/null 2>&1 || { orchc_log "no python3 on $(hostname): no GPU exporter"; return 0; }
        setsid python3 "$3" --port "$2" </dev/null >/dev/null 2>&1 &
    fi
    orchc_started "$!"
    orchc_log "GPU metrics of $(hostname) served by the $1 exporter on port $2"
}

# orchc_process_exporter PORT PROGRAM PID: serve the CPU time and memory of PID's process tree, read from /proc, on
# PORT until the job ends (orchc's process_exporter.py, unprivileged: what cAdvisor cannot see under Apptainer).
orchc_process_exporter() {
    command -v python3 >/dev/null 2>&1 || { orchc_log "no python3 on $(hostname): no process exporter"; return 0; }
    setsid python3 "$2" --pid "$3" --port "$1" </dev/null >/dev/null 2>&1 &
    orchc_started "$!"
    orchc_log "the process tree of $ORCHC_TYPE (pid $3) exported on port $1"
}

# orchc_need_driver MINIMUM WHAT: stop unless this node's NVIDIA driver is MINIMUM or newer (WHAT needs it: an
# image's CUDA release), before a server starts and fails with a CUDA error deep in its log.
orchc_need_driver() {
    local driver host
    host=$(hostname -s 2>/dev/null || hostname)
    command -v nvidia-smi >/dev/null 2>&1 || orchc_fail "$2 needs an NVIDIA driver $1 or newer; $host has no nvidia-smi (no NVIDIA driver)"
    # the whole answer, then its first line: `| head -n 1` may close the pipe before nvidia-smi has written its
    # other GPUs' lines, and under pipefail the SIGPIPE it then gets would read as no driver
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null) || driver=""
    driver=${driver%%$'\n'*}
    [ -n "$driver" ] || orchc_fail "cannot read the NVIDIA driver version on $host (nvidia-smi --query-gpu=driver_version)"
    if [ "$(printf '%s\n%s\n' "$1" "$driver" | sort -V | head -n 1)" != "$1" ]; then
        orchc_fail "$2 needs an NVIDIA driver $1 or newer; $host has $driver: use a node with a newer driver or an image built for an older CUDA"
    fi
    orchc_log "NVIDIA driver $driver on $host ($2 needs $1 or newer)"
}

# orchc_gpu_sampler INTERVAL FOLDER: sample this node's GPUs every INTERVAL s into FOLDER/gpu.csv (nvidia-smi's
# CSV, header first: timestamp, index, name, uuid, utilisation of GPU and memory in %, memory used and total in
# MiB, power in W, temperature in C; one row per GPU and sample) until the job ends. Without nvidia-smi on the
# node it says so and the job goes on.
orchc_gpu_sampler() {
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        orchc_log "no nvidia-smi on $(hostname): GPU sampling skipped"
        return 0
    fi
    mkdir -p "$2"
    setsid nvidia-smi --query-gpu=timestamp,index,name,uuid,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw,temperature.gpu \
        --format=csv,nounits -l "$1" >"$2/gpu.csv" </dev/null &
    orchc_started "$!"
    orchc_log "sampling the GPUs of $(hostname) every $1 s into $2/gpu.csv"
}
