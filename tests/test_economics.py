"""Whole-node economics (compiler/script/economics.py): what a recipe reserves on a site that bills whole nodes,
and the GPUs a job leaves idle there (README "Sites", "Whole-node economics")."""

from __future__ import annotations

import pytest
from test_scheduler import fake

from compiler.script.directives import gpus_of

__all__ = ["fake"]   # the fixture, imported for the test below

VLLM = """\
account: p200981
resources: {cpus_per_task: 16, mem: "64G", time: "01:30:00"}
service:
  name: vllm
  model: Qwen/Qwen3-0.6B
  resources: {partition: gpu, gres: "GRES"}
client:
  name: bench
  type: llm_client
  target: vllm
  resources: {partition: cpu, time: "00:45:00"}
"""


def vllm(gres: str = "gpu:1", site: str = "meluxina") -> str:
    return f"site: {site}\n" + VLLM.replace("GRES", gres)


def test_a_job_using_one_of_four_gpus_of_a_billed_node_is_warned_about_where_it_asks(orchc, write):
    result = orchc("validate", write("r.yaml", vllm()))
    assert result.code == 0, result.err
    line = next(n for n, text in enumerate(vllm().splitlines(), 1) if "gres" in text)
    column = vllm().splitlines()[line - 1].index('"gpu:1"') + 1
    assert f"r.yaml:{line}:{column}: warning: service 'vllm' asks for 1 of the 4 GPUs of a gpu node on meluxina" \
        in result.err
    assert "3 GPU(s) stay idle but are paid for" in result.err and "allocation: one" in result.err
    # 1.5 h of one GPU node and 0.75 h of one CPU node, at most
    assert "reserves at most 2.25 node-hours on meluxina" in result.out


@pytest.mark.parametrize("gres", ["gpu:4", "gpu:a100:2", "gpu:2"])
def test_half_a_node_of_gpus_or_more_is_not_warned_about(orchc, write, gres):
    result = orchc("validate", write("r.yaml", vllm(gres)))
    assert result.code == 0 and "warning" not in result.err, result.err


def test_a_shared_site_prints_no_node_hours_and_no_warning(orchc, write):
    result = orchc("validate", write("r.yaml", vllm(site="local").replace("account: p200981\n", "")))
    assert result.code == 0, result.err
    assert "node-hours" not in result.out and "warning" not in result.err


def test_a_job_without_a_time_limit_is_named_not_counted(orchc, write):
    site = write("mysite.yaml", "site: mysite\nruntime: native\npartitions: [cpu, gpu]\nbilling: whole_node\n")
    text = vllm(site=str(site)).replace("account: p200981\n", "").replace(', time: "00:45:00"', "")
    text = text.replace(', time: "01:30:00"}', "}").replace('gres: "gpu:1"}', 'gres: "gpu:1", time: "01:30:00"}')
    result = orchc("validate", write("r.yaml", text))
    assert result.code == 0, result.err
    assert "reserves at most 1.50 node-hours" in result.out
    assert "without a time limit, so not counted: bench" in result.out


def test_one_allocation_is_billed_once_and_not_warned_about(orchc, write):
    text = vllm() + "allocation: {mode: one, resources: {partition: gpu}}\n"
    result = orchc("validate", write("r.yaml", text))
    assert result.code == 0, result.err
    assert "1 SLURM job(s)" in result.out and "warning" not in result.err


def test_a_node_shape_for_a_partition_the_site_does_not_have_is_a_located_error(orchc, write, tmp_path):
    site = write("mysite.yaml", "site: mysite\nruntime: native\npartitions: [cpu, gpu]\nbilling: whole_node\n"
                 "nodes:\n  cpu: {cores: 8}\n  gpus: {cores: 8, gpus: 4}\n")
    result = orchc("validate", write("r.yaml", vllm(site=str(site)).replace("account: p200981\n", "")))
    assert result.code == 1
    assert f"{site.name}:7:3: error: nodes: 'gpus' is not one of the site's partitions (cpu, gpu); did you mean 'gpu'" \
        in result.err.replace(str(site.parent) + "/", "")


@pytest.mark.parametrize("gres, count", [("gpu", 1), ("gpu:4", 4), ("gpu:a100:2", 2), ("gpu:a100", 1),
                                         ("shard:2", 0), ("gpu:2,shard:1", 2), ("gpu:1,gpu:tesla:2", 3)])
def test_gpus_of_a_gres(gres, count):
    assert gpus_of(gres) == count


def test_submit_says_what_the_run_reserves_after_submitting(fake, orchc, write, tmp_path):
    result = orchc("submit", write("r.yaml", vllm()), "--run-dir", str(tmp_path / "run"), "--no-prepare")  # no Apptainer here
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[-2] == "the run reserves at most 2.25 node-hours on meluxina (whole nodes are billed: 2 SLURM job(s), " \
        "each its nodes x its time limit)"
    assert lines[0].startswith("submitted service vllm: SLURM job ")


MIXED = ("site: mixed\nruntime: native\npartitions: [standard-g, small-g]\nbilling: whole_node\n"
         "nodes:\n  standard-g: {cores: 56, gpus: 8}\n  small-g: {cores: 56, gpus: 8, billing: shared}\n")


def test_a_partition_billed_by_its_share_is_not_warned_about_nor_counted(orchc, write):
    """LUMI-G: standard-g allocates whole nodes, small-g bills the GCDs a job asks for (a partition's own billing)."""
    site = write("mixed.yaml", MIXED)
    whole = vllm(site=str(site)).replace("account: p200981\n", "").replace("partition: gpu", "partition: standard-g") \
        .replace("partition: cpu", "partition: small-g")
    result = orchc("validate", write("r.yaml", whole))
    assert result.code == 0, result.err
    assert "asks for 1 of the 8 GPUs of a standard-g node on mixed" in result.err
    assert "reserves at most 1.50 node-hours on mixed (whole nodes are billed: 1 SLURM job(s)" in result.out, result.out
    shared = whole.replace("partition: standard-g", "partition: small-g")
    result = orchc("validate", write("r.yaml", shared))
    assert result.code == 0 and "warning" not in result.err, result.err
    assert "node-hours" not in result.out, result.out
