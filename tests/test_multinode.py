"""Jobs across nodes (issue 21): a type says whether and how it spans nodes (`multi_node:`); `nodes > 1` on a type
that does not is a located error; vLLM runs one rank per node under srun (checked here as compiled, and for real on
the multi-node test cluster in tests/test_cluster_multinode.py)."""

from __future__ import annotations

import re

from conftest import ROOT

HEADLINE = re.compile(r"^(?P<loc>\S+:\d+:\d+): error: (?P<message>.+)$", re.M)


def errors(err: str) -> list[tuple[str, str]]:
    return [(m["loc"], m["message"]) for m in HEADLINE.finditer(err)]


def test_two_nodes_on_a_type_that_runs_on_one_is_refused_at_the_recipes_nodes(orchc, write, tmp_path):
    recipe = write("r.yaml", "site: local\nservice:\n  name: cache\n  type: redis\n  resources: {nodes: 2}\n"
                             "client:\n  name: bench\n  type: redis_client\n  resources:\n    nodes: 3\n")
    done = orchc("validate", recipe, cwd=tmp_path)
    assert done.code == 1 and "Traceback" not in done.err
    assert errors(done.err) == [
        ("r.yaml:5:22", "resources.nodes: service 'cache' asks for 2 nodes, but type 'redis' runs on one node (it "
                        "declares no multi_node:): the other nodes would be billed and idle; give nodes: 1, or use a "
                        "type that declares multi_node (README \"Across nodes\")"),
        ("r.yaml:10:12", "resources.nodes: client 'bench' asks for 3 nodes, but type 'redis_client' runs on one node (it "
                         "declares no multi_node:): the other nodes would be billed and idle; give nodes: 1, or use a "
                         "type that declares multi_node (README \"Across nodes\")"),
    ]


def test_one_node_stays_allowed_on_every_type(orchc, write, tmp_path):
    recipe = write("r.yaml", "site: local\nservice:\n  name: cache\n  type: redis\n  resources: {nodes: 1}\n")
    assert orchc("validate", recipe, cwd=tmp_path).code == 0


MEMCACHED = """\
type: memcached
extends: service
fields:
  ports: {default: [11211]}
container:
  command: memcached -p {{ ports[0] }}
phases:
  health_check:
    - orchc_wait_tcp 127.0.0.1 {{ ports[0] }} {{ health_timeout }}
"""


def test_a_misspelt_multi_node_key_is_located_with_a_suggestion(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED + "multi_node:\n  launcher: srun\n  rank: per_node\n  command: memcached\n")
    recipe = write("r.yaml", "site: local\nservice:\n  name: cache\n  type: memcached\n")
    done = orchc("validate", recipe, "--defs", "defs", cwd=tmp_path)
    assert done.code == 1
    assert ("defs/memcached.yaml:12:3", "unknown field 'rank' in multi_node of type 'memcached'; did you mean 'ranks'?") \
        in errors(done.err), done.err


def test_a_service_across_nodes_needs_the_command_of_its_ranks_and_a_client_gives_none(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED + "multi_node: {launcher: srun, ranks: per_node}\n")
    write("defs/probe.yaml", "type: probe\nextends: client\nmulti_node: {launcher: srun, ranks: per_node, command: x}\n"
                             "phases:\n  benchmark: [echo]\n")
    recipe = write("r.yaml", "site: local\nservice:\n  name: cache\n  type: memcached\nclient:\n  name: p\n  type: probe\n")
    done = orchc("validate", recipe, "--defs", "defs", cwd=tmp_path)
    assert done.code == 1
    assert errors(done.err) == [
        ("defs/memcached.yaml:10:13", "multi_node of type 'memcached' needs `command:`, what each rank of the service runs"),
        ("defs/probe.yaml:3:56", "multi_node.command of type 'probe': only a service's ranks run a command; a client's "
                                 "benchmark phase runs its tasks (orchc_tasks_run, README \"Across nodes\")"),
    ], done.err


def test_the_type_schema_documents_multi_node():
    import json
    schema = json.loads((ROOT / "schemas" / "typedef.schema.json").read_text())
    assert set(schema["properties"]["multi_node"]["properties"]) >= {"launcher", "ranks", "command", "worker_args"}



def vllm_recipe(nodes: int, extra: str = "") -> str:
    return (f"site: local\n{extra}service:\n  name: llm\n  type: vllm\n  model: tiny\n"
            f"  resources: {{nodes: {nodes}, gres: 'gpu:2'}}\n")


def test_a_multi_node_service_cannot_share_one_allocation(orchc, write, tmp_path):
    # under allocation: one each job is one task on one node (compiler/script/allocation.py)
    recipe = write("r.yaml", vllm_recipe(2, "allocation: one\n"))
    done = orchc("compile", recipe, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.code == 1
    assert done.err.startswith("r.yaml:2:13: error: service 'llm' asks for 2 nodes: under allocation: one"), done.err


def test_vllm_on_two_nodes_compiles_into_one_srun_rank_per_node(orchc, write, tmp_path):
    done = orchc("compile", write("r.yaml", vllm_recipe(2)), "-o", tmp_path / "out", cwd=tmp_path)
    assert done.code == 0, done.err
    script = (tmp_path / "out" / "r" / "llm.sbatch").read_text()
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks=2\n" in script
    (rank,) = [line.strip() for line in script.splitlines() if line.strip().startswith("HF_HOME=")]
    assert (" vllm serve tiny --host 0.0.0.0 --port \"${ORCHC_PORT_ports_0}\" --tensor-parallel-size 2 --pipeline-parallel-size 2 "
            "--distributed-executor-backend mp --nnodes \"$ORCHC_NNODES\" --node-rank \"$ORCHC_NODE_RANK\" "
            "--master-addr \"$ORCHC_MASTER_ADDR\" --master-port 29500 ") in rank
    assert rank.endswith(" $ORCHC_RANK_ARGS")
    assert "orchc_ranks_start 2 --headless API_KEY &\nORCHC_SERVICE_PID=$!\n" in script


def test_vllm_on_one_node_keeps_its_one_command(orchc, write, tmp_path):
    done = orchc("compile", write("r.yaml", vllm_recipe(1)), "-o", tmp_path / "out", cwd=tmp_path)
    assert done.code == 0, done.err
    script = (tmp_path / "out" / "r" / "llm.sbatch").read_text()
    assert "srun" not in script and "orchc_ranks_start" not in script and "--nnodes" not in script
    assert "setsid  vllm serve tiny --host 0.0.0.0 --port \"${ORCHC_PORT_ports_0}\" --tensor-parallel-size 2 " in script
