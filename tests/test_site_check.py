"""`orchc site check` (compiler/run/sitecheck.py) against the real one-node test cluster: a profile that matches it
reports no difference; one that names what the machine lacks reports exactly that.

The test cluster keeps no accounting database (accounting_storage/none), so the real `sacctmgr` cannot list QoS
names there: that case is tested as such (reported unchecked), and the comparison of QoS names with a stand-in
`sacctmgr` that prints a known list. The machine has no environment modules and no Apptainer: `module` is a stand-in
shell function given through BASH_ENV, `apptainer` a stand-in script that prints a version, each said where used.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_cluster import cluster  # noqa: F401  (the fixture, used by name below)
from test_remote import server, sockets  # noqa: F401  (fixtures: a real sshd, private control sockets)

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]

# the test cluster (tests/cluster/start.sh): partitions cpu and gpu over four nodes of 128 cores and four (fake) GPUs
MATCHING = """site: testcluster
runtime: native
partitions: [cpu, gpu]
billing: whole_node
nodes:
  cpu: {cores: 128, gpus: 4}
  gpu: {cores: 128, gpus: 4}
storage:
  models: STORE/models
  data: $ORCHC_RUN_DIR/data
"""


def check(tmp_path: Path, profile: str, *args: str, path: str | None = None,
          bash_env: Path | None = None) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site.yaml"
    site.write_text(profile.replace("STORE", str(tmp_path / "store")))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if path is not None:
        env["PATH"] = f"{path}:{env['PATH']}"
    if bash_env is not None:
        env["BASH_ENV"] = str(bash_env)
    done = subprocess.run([sys.executable, "-m", "compiler", "site", "check", str(site), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def differences(out: str) -> list[str]:
    return [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("  differs ")]


def program(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_a_profile_that_matches_the_test_cluster_reports_no_difference(tmp_path):
    done = check(tmp_path, MATCHING, "--local")
    assert done.returncode == 0, done.stdout + done.stderr
    assert differences(done.stdout) == [], done.stdout
    assert "  ok        partitions cpu, gpu\n" in done.stdout
    assert "  ok        nodes.gpu: 128 cores, 4 GPU(s)\n" in done.stdout
    assert f"storage.models: {tmp_path}/store/models is writable (not there yet: jobs create it in {tmp_path})" in done.stdout
    assert done.stdout.rstrip().endswith("no difference found")
    assert not (tmp_path / "store").exists()   # the check creates no folder


def test_a_missing_partition_and_a_wrong_node_shape_are_exactly_the_differences(tmp_path):
    profile = MATCHING.replace("[cpu, gpu]", "[cpu, gpu, fpga]").replace("gpu: {cores: 128, gpus: 4}", "gpu: {cores: 64, gpus: 1}")
    done = check(tmp_path, profile, "--local")
    assert done.returncode == 1, done.stdout + done.stderr
    assert differences(done.stdout) == [
        "partition 'fpga': not on this machine (sinfo lists: cpu, gpu)",
        "nodes.gpu.cores: the profile says 64, sinfo says 128 (128:1:1 sockets:cores:threads)",
        "nodes.gpu.gpus: the profile says 1, sinfo says 4 (gres gpu:4)",
    ], done.stdout
    assert done.stdout.rstrip().endswith("3 difference(s)")


def test_qos_names_the_real_sacctmgr_cannot_list_are_unchecked_not_different(tmp_path):
    done = check(tmp_path, MATCHING + "qos: [normal]\n", "--local")
    assert done.returncode == 0, done.stdout
    assert "  unchecked QoS normal: sacctmgr cannot list them here (" in done.stdout


def test_a_missing_qos_is_exactly_the_difference(tmp_path):
    # stand-in: a cluster whose accounting database holds the QoS normal and high
    program(tmp_path / "bin", "sacctmgr", 'test "$*" = "-nP show qos format=name" || exit 2\nprintf "normal\\nhigh\\n"\n')
    done = check(tmp_path, MATCHING + "qos: [normal, high, long]\n", "--local", path=str(tmp_path / "bin"))
    assert done.returncode == 1, done.stdout
    assert differences(done.stdout) == ["QoS 'long': not on this machine (sacctmgr lists: high, normal)"], done.stdout
    assert "  ok        QoS normal, high\n" in done.stdout


def test_a_reservation_a_qos_needs_is_checked_with_scontrol(tmp_path):
    done = check(tmp_path, MATCHING + "qos: [normal, {name: dev, reservations: {gpu: gpudev}}]\n", "--local")
    assert done.returncode == 1, done.stdout
    assert differences(done.stdout) == ["reservation 'gpudev' (QoS 'dev' on partition 'gpu'): scontrol knows no such reservation"]


def test_modules_load_in_order_after_the_purge_and_a_missing_one_is_named(tmp_path):
    profile = MATCHING + "modules: [env/release/2024.1, Apptainer/9.9]\n"
    done = check(tmp_path, profile, "--local")
    assert differences(done.stdout) == [
        "modules: the module command is not defined in the profile's shell /bin/bash (modules env/release/2024.1, "
        "Apptainer/9.9 not checked)"], done.stdout
    # stand-in for Lmod: `module load` succeeds for env/release/2024.1 only, and only after a purge
    stand_in = tmp_path / "modules.sh"
    stand_in.write_text('module() { case "$1" in purge) : > "$HOME_PURGED";; load) [ -e "$HOME_PURGED" ] && '
                        '[ "$2" = env/release/2024.1 ];; *) return 1;; esac; }\n'
                        f'HOME_PURGED={tmp_path}/purged\n')
    done = check(tmp_path, profile, "--local", bash_env=stand_in)
    assert done.returncode == 1
    assert differences(done.stdout) == [
        "module Apptainer/9.9: does not load after `module purge` and the modules before it"], done.stdout
    assert "  ok        module env/release/2024.1\n" in done.stdout


def test_the_container_runtime_and_its_version(tmp_path):
    profile = MATCHING.replace("runtime: native", "runtime: apptainer")
    done = check(tmp_path, profile, "--local", path=str(tmp_path / "empty"))
    assert differences(done.stdout) == ["runtime apptainer: not found"], done.stdout
    program(tmp_path / "bin", "apptainer", 'test "$*" = --version || exit 2\necho "apptainer version 1.3.6"\n')
    done = check(tmp_path, profile, "--local", path=str(tmp_path / "bin"))
    assert done.returncode == 0, done.stdout
    assert "  ok        runtime apptainer: apptainer version 1.3.6\n" in done.stdout


def test_a_storage_place_that_cannot_be_written_is_a_difference(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    profile = MATCHING.replace("STORE/models", f"{tmp_path}/afile/models/${{USER}}")
    done = check(tmp_path, profile, "--local")
    assert done.returncode == 1
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert differences(done.stdout) == [f"storage.models: {tmp_path}/afile/models/{user} cannot be written: "
                                        f"{tmp_path}/afile is not a folder you can write in"], done.stdout


def test_a_storage_place_of_the_account_needs_account(tmp_path):
    profile = MATCHING.replace("STORE/models", "STORE/${SLURM_JOB_ACCOUNT}/models")
    done = check(tmp_path, profile, "--local")
    assert done.returncode == 0
    assert "  unchecked storage.models: " in done.stdout and "give --account to check it" in done.stdout
    done = check(tmp_path, profile, "--local", "--account", "p200981")
    assert f"  ok        storage.models: {tmp_path}/store/p200981/models is writable" in done.stdout, done.stdout
    done = check(tmp_path, profile, "--local", "--account", "p2; rm -rf /")
    assert done.returncode == 1 and "is not an account name" in done.stderr, done.stderr


def test_the_gpu_job_reports_the_gpus_and_driver_a_job_sees(tmp_path):
    profile = MATCHING.replace("  cpu: {cores: 128, gpus: 4}\n", "  cpu: {cores: 128}\n").replace(
        "partitions: [cpu, gpu]", "partitions: [cpu, gpu]\ndefaults: {resources: {partition: cpu}}")
    profile = profile.replace("nodes:\n  cpu: {cores: 128}\n", "nodes:\n")
    # stand-in nvidia-smi (the test node's GPUs are fake devices): four GPUs, driver 580.65.06
    program(tmp_path / "bin", "nvidia-smi", 'case "$*" in -L) for i in 0 1 2 3; do echo "GPU $i: Stand-in (UUID: GPU-$i)"; done;; '
            '"--query-gpu=driver_version --format=csv,noheader") echo 580.65.06;; *) exit 2;; esac\n')
    done = check(tmp_path, profile, "--local", "--gpu-job", path=str(tmp_path / "bin"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  ok        GPU job on 'gpu': 4 nvidia GPU(s), driver 580.65.06\n" in done.stdout
    done = check(tmp_path, profile, "--local", "--gpu-job", path="/nonexistent")
    assert differences(done.stdout) == ["GPU job on 'gpu': neither nvidia-smi nor rocm-smi in the job"], done.stdout


@pytest.mark.ssh
def test_over_ssh_the_login_node_is_checked_not_this_machine(server, sockets, tmp_path):  # noqa: F811
    """The site's ssh: target (the user's override, as tests/test_remote.py writes it) runs the probe as the test
    user on the real sshd: its home is checked, and the same partitions are found through it."""
    import json

    from ssh import sshd as sshd_helper

    config = tmp_path / "config"
    (config / "orchc" / "sites").mkdir(parents=True)
    (config / "orchc" / "sites" / "testcluster.yaml").write_text(
        f"ssh:\n  host: 127.0.0.1\n  port: {server.port}\n  user: {sshd_helper.USER}\n  identity_file: {server.client_key}\n"
        f"  remote_dir: {json.dumps('orchc-runs')}\n  options:\n    - StrictHostKeyChecking=yes\n"
        f"    - UserKnownHostsFile={server.known_hosts}\n    - GlobalKnownHostsFile=/dev/null\n")
    profile = MATCHING.replace("STORE/models", "$HOME/orchc-check/${USER}/models") + "qos: [normal]\n"
    site = tmp_path / "site.yaml"
    site.write_text(profile)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(config)}
    done = subprocess.run([sys.executable, "-m", "compiler", "site", "check", str(site)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"against {sshd_helper.USER}@127.0.0.1:{server.port}:" in done.stdout
    home = Path("/home") / sshd_helper.USER
    assert f"  ok        storage.models: {home}/orchc-check/{sshd_helper.USER}/models is writable (not there yet: jobs create " \
           f"it in {home})\n" in done.stdout, done.stdout
    assert "  ok        partitions cpu, gpu\n" in done.stdout
    assert not (home / "orchc-check").exists()


def test_the_array_size_limit_is_compared_with_the_clusters_max_array_size(tmp_path):
    # the test cluster's slurm.conf leaves MaxArraySize at SLURM's default, 1001
    done = check(tmp_path, MATCHING + "limits: {max_array_size: 1001}\n", "--local")
    assert done.returncode == 0 and "  ok        limits.max_array_size: the profile says 1001\n" in done.stdout, done.stdout
    done = check(tmp_path, MATCHING + "limits: {max_array_size: 5000, max_running: 2}\n", "--local")
    assert done.returncode == 1, done.stdout
    assert differences(done.stdout) == ["limits.max_array_size: the profile says 5000, scontrol says MaxArraySize=1001"]
    # the real sacctmgr has no accounting database to read here
    assert "  unchecked limits max_running: sacctmgr cannot show them here (" in done.stdout, done.stdout


def test_job_limits_are_the_lowest_of_the_users_associations_and_the_default_qos(tmp_path):
    # stand-in: an accounting database whose association allows 100 submitted jobs, QoS default 50 submitted, 8 running
    program(tmp_path / "bin", "sacctmgr", 'case "$*" in\n'
            '  "-nP show assoc where user=$USER format=maxsubmit,maxjobs") printf "100|\\n|\\n" ;;\n'
            '  "-nP show qos format=name,maxsubmitpu,maxjobspu") printf "default|50|8\\nlong|1|1\\n" ;;\n'
            '  *) exit 2 ;;\nesac\n')
    profile = MATCHING + "defaults:\n  resources: {qos: default}\nlimits: {max_submit: 50, max_running: 4}\n"
    done = check(tmp_path, profile, "--local", path=str(tmp_path / "bin"))
    assert done.returncode == 1, done.stdout
    assert "  ok        limits.max_submit: 50 (MaxSubmit per user)\n" in done.stdout, done.stdout
    assert differences(done.stdout) == [
        "limits.max_running: the profile says 4, sacctmgr: the associations of $USER and QoS default allow 8"], done.stdout
