"""Config files that scripts write (here-documents) are valid for the programs that read them."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import GOLDEN, in_ci
from ruamel.yaml import YAML

HEREDOC = re.compile(r"^cat > (?P<path>\S+) <<'(?P<tag>ORCHC_EOF_*)'\n(?P<body>.*?)\n(?P=tag)$", re.M | re.S)


def written_files(script_text: str) -> dict[str, str]:
    return {m["path"]: m["body"] + "\n" for m in HEREDOC.finditer(script_text)}


def one_file(script: str, suffix: str) -> str:
    (content,) = [text for path, text in written_files((GOLDEN / script).read_text()).items() if path.endswith(suffix)]
    return content


@pytest.mark.parametrize("script", ["prometheus/prometheus.sbatch", "monitoring_stack/prometheus.sbatch"])
def test_prometheus_config_passes_promtool(script, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if in_ci():
            pytest.fail("CI=true but promtool is missing; run tests/install-deps.sh")
        pytest.skip("promtool not installed; run tests/install-deps.sh")
    config = tmp_path / "prometheus.yml"
    config.write_text(re.sub(r"@ORCHC_HOST_[0-9a-f]{16}:ollama@", "node01", one_file(script, "prometheus.yml")))
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_datasource_provisioning_format():
    """Grafana's documented format: apiVersion 1, datasources with name, type, access, url."""
    doc = YAML(typ="safe").load(one_file("grafana/grafana.sbatch", "datasources/orchc.yaml"))
    assert doc["apiVersion"] == 1
    assert doc["datasources"], "no data source provisioned"
    for source in doc["datasources"]:
        assert set(source) >= {"name", "type", "access", "url"}
        assert source["access"] in ("proxy", "direct")
        assert re.match(r"^https?://[^/\s]+", source["url"])
    assert [s["isDefault"] for s in doc["datasources"]].count(True) == 1


def test_grafana_dashboard_provider_format():
    doc = YAML(typ="safe").load(one_file("grafana/grafana.sbatch", "dashboards/orchc.yaml"))
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["name"]
    assert provider["options"]["path"].endswith("/dashboards")


def test_a_recipe_job_named_as_host_becomes_a_run_time_placeholder():
    content = one_file("monitoring_stack/grafana.sbatch", "datasources/orchc.yaml.orchc-pending")
    (token,) = re.findall(r'url: "http://@ORCHC_HOST_([0-9a-f]{16}):prometheus@:9090"', content)
    script = (GOLDEN / "monitoring_stack" / "grafana.sbatch").read_text()
    assert ("orchc_fill_hosts_later \"$ORCHC_RUN_DIR\"/config/grafana/provisioning/datasources/orchc.yaml "
            f"@ORCHC_HOST_{token}:prometheus@=prometheus") in script
