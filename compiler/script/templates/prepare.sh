# orchc prepare: the images a recipe's jobs need, built or pulled once on a login node into the site's image
# store, before any job runs. Plain bash; orchc writes the lines after these functions for one recipe.

orchc_say() { printf 'orchc prepare: %s\n' "$*"; }
orchc_fail() { printf 'orchc prepare: error: %s\n' "$*" >&2; exit 1; }

# orchc_registry_login FILE: when FILE exists, its first line is the registry user name and its second the
# password (or token): handed to Apptainer in its own environment (APPTAINER_DOCKER_USERNAME/PASSWORD), never
# on a command line nor in a file orchc writes. FILE must be this user's, mode 0600.
orchc_registry_login() {
    local user password
    [ -e "$1" ] || return 0
    [ -f "$1" ] && [ ! -L "$1" ] || orchc_fail "registry credentials $1: not a regular file"
    [ -O "$1" ] || orchc_fail "registry credentials $1: does not belong to $(id -un)"
    [ "$(stat -c %a "$1")" = 600 ] || orchc_fail "registry credentials $1: must have mode 0600 (chmod 600 $1)"
    { IFS= read -r user && IFS= read -r password; } <"$1" || orchc_fail "registry credentials $1: want two lines, user name then password"
    [ -n "$user" ] && [ -n "$password" ] || orchc_fail "registry credentials $1: want two lines, user name then password"
    export APPTAINER_DOCKER_USERNAME=$user APPTAINER_DOCKER_PASSWORD=$password
    export SINGULARITY_DOCKER_USERNAME=$user SINGULARITY_DOCKER_PASSWORD=$password
    orchc_say "registry credentials of $user from $1"
}

# orchc_node_local_dirs CACHE TMP: Apptainer's cache and temp folder (layers, the unpacked root file system),
# on this node's own disk unless the site names others: the many small files stay off Lustre.
orchc_node_local_dirs() {
    export APPTAINER_CACHEDIR=${1:-${TMPDIR:-/tmp}/orchc-apptainer-$(id -u)/cache}
    export APPTAINER_TMPDIR=${2:-${TMPDIR:-/tmp}/orchc-apptainer-$(id -u)/tmp}
    export SINGULARITY_CACHEDIR=$APPTAINER_CACHEDIR SINGULARITY_TMPDIR=$APPTAINER_TMPDIR
    mkdir -p "$APPTAINER_CACHEDIR" "$APPTAINER_TMPDIR" || orchc_fail "cannot create $APPTAINER_CACHEDIR and $APPTAINER_TMPDIR"
}

# orchc_prepared SIF SOURCE: true when SIF is there, built from SOURCE, its sha256 recorded.
orchc_prepared() {
    [ -f "$1" ] && [ -f "$1.sha256" ] && [ "$(cat "$1.source" 2>/dev/null)" = "$2" ]
}

# orchc_prepare_image SIF SOURCE [DEFINITION]: make SIF the image built from SOURCE (from the definition file
# DEFINITION when given: SOURCE is then def:NAME@sha256:<its sha256>), once. Under an flock on SIF.lock (another
# prepare of the same store waits), re-checked once the lock is held, built into SIF.tmp.<host>.<pid> beside it
# and renamed into place only when whole. Stale temp files of this host are removed (the lock is held, so none
# is a build in progress here); another host's are left alone: with Lustre mounted `localflock` the lock does
# not reach other nodes, and its file may be a build in progress there. SIF.source names what SIF was built
# from; a SIF with a matching SIF.source (pulled by hand, say) is kept, and one without SIF.source is refused,
# never overwritten. SIF.sha256 is its digest, which each job checks at start, and SIF.stat the file's size,
# modification time and inode as hashed.
orchc_prepare_image() {
    local sif=$1 source=$2 input=${3:-$2} lock host tmp digest fakeroot=()
    if orchc_prepared "$sif" "$source"; then
        orchc_say "$sif: present (from $source)"
        return 0
    fi
    if [ -f "$sif" ] && [ ! -e "$sif.source" ]; then
        orchc_fail "$sif exists but $sif.source does not: if it was pulled from $source, write that line into $sif.source; otherwise remove $sif"
    fi
    mkdir -p "$(dirname "$sif")" || orchc_fail "cannot create $(dirname "$sif")"
    exec {lock}>>"$sif.lock" || orchc_fail "cannot open the lock file $sif.lock"
    if ! flock -n "$lock"; then
        orchc_say "waiting for another prepare's build of $sif"
        flock "$lock" || orchc_fail "cannot lock $sif.lock"
    fi
    if ! { [ -f "$sif" ] && [ "$(cat "$sif.source" 2>/dev/null)" = "$source" ]; }; then
        host=$(hostname -s 2>/dev/null || echo host)
        rm -f -- "$sif.tmp.$host".*
        tmp=$sif.tmp.$host.$$
        orchc_say "building $sif from $source (missing$([ -f "$sif" ] && echo ", or built from $(cat "$sif.source")"))"
        # a definition file's %post runs as root in the image: unprivileged, that is Apptainer's --fakeroot
        [ "$input" = "$source" ] || [ "$(id -u)" = 0 ] || fakeroot=(--fakeroot)
        if ! "${ORCHC_CONTAINER_CLI:-apptainer}" build "${fakeroot[@]}" "$tmp" "$input" </dev/null; then
            rm -f -- "$tmp"
            orchc_fail "cannot build $sif from $source"
        fi
        printf '%s\n' "$source" >"$tmp.source"
        rm -f -- "$sif.sha256"
        mv -f -- "$tmp" "$sif"
        mv -f -- "$tmp.source" "$sif.source"
    fi
    if [ ! -f "$sif.sha256" ]; then
        digest=$(sha256sum <"$sif")
        printf '%s  %s\n' "${digest%% *}" "${sif##*/}" >"$sif.sha256.tmp.$$"
        mv -f -- "$sif.sha256.tmp.$$" "$sif.sha256"
        orchc_say "$sif: sha256 ${digest%% *} recorded"
    fi
    # the file as hashed (size, modification time, inode): a job that finds it so trusts the recorded sha256
    # instead of reading a 10 GB image again on a billed node (orchc_image)
    stat -c '%s %Y %i' -- "$sif" >"$sif.stat.tmp.$$" && mv -f -- "$sif.stat.tmp.$$" "$sif.stat"
    exec {lock}>&-
}

# orchc_phase_begin ROLE JOB MODELS NAME...: the environment of JOB's `prepare` phase, which runs next in a subshell:
# the job's model store (created), a throwaway folder for the run folder and data folder its container binds, and
# the variables NAME (HF_TOKEN, the web proxy) passed into its containers when set, in their environment.
orchc_phase_begin() {
    local name cli=${ORCHC_CONTAINER_CLI:-apptainer}
    ORCHC_ROLE=$1 ORCHC_JOB=$2 ORCHC_MODELS=$3
    ORCHC_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/orchc-prepare-XXXXXX") || orchc_fail "cannot create a temporary folder"
    ORCHC_DATA=$ORCHC_RUN_DIR ORCHC_RESULTS=$ORCHC_RUN_DIR
    export ORCHC_ROLE ORCHC_JOB ORCHC_MODELS ORCHC_RUN_DIR ORCHC_DATA ORCHC_RESULTS
    mkdir -p "$ORCHC_MODELS" || orchc_fail "$ORCHC_ROLE $ORCHC_JOB: cannot create the model store $ORCHC_MODELS"
    for name in "${@:4}"; do
        if [ -n "${!name+set}" ]; then
            export "${cli^^}ENV_$name=${!name}"
        fi
    done
    orchc_say "$ORCHC_ROLE $ORCHC_JOB: prepare"
}
# what a type's phase calls to say something, as in a job
orchc_log() { orchc_say "$ORCHC_ROLE $ORCHC_JOB: $*"; }

# orchc_phase_end PID ROLE JOB WHERE: wait for the phase's subshell PID (started in the background, so that its
# errexit holds); its failure stops prepare, naming the job and the type file's line.
orchc_phase_end() {
    local status=0
    wait "$1" || status=$?
    rm -rf -- "$ORCHC_RUN_DIR"
    [ "$status" = 0 ] || orchc_fail "$2 $3: its prepare phase failed ($4)"
}
