"""deploy/prometheus/alert-rules.yml: valid for Prometheus' own ``promtool check rules``, its
unit tests (alert-rules.test.yml: series that fire each alert and near misses that do not) pass
``promtool test rules``, and every metric its expressions name is on a real server's /metrics,
so a renamed metric fails here rather than silencing an alert.

``make test`` installs promtool where it can (``make prometheus``: Debian's prometheus package);
elsewhere the promtool tests are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.apps import make_settings
from tests.support.models import make_model_repo
from tests.support.servers import ROOT, running_server

RULES = ROOT / "deploy" / "prometheus" / "alert-rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (make prometheus, or apt-get install prometheus)",
)
# the service's metric families (labels such as `model` are never followed by an underscore)
METRIC = re.compile(r"\b((?:model|prediction_log)_[a-z0-9_]+)\b")


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS: 3 rules found" in promtool("check", "rules", RULES.name)


@needs_promtool
def test_the_rules_fire_and_stay_quiet_as_their_unit_tests_say() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alert-rules.test.yml")


def rule_metrics() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {name for g in groups for r in g["rules"] for name in METRIC.findall(r["expr"])}


def test_every_metric_the_rules_name_is_served(tmp_path: Path) -> None:
    names = rule_metrics()
    assert {"model_drifting", "prediction_log_dropped_total"} <= names
    settings = make_settings(
        make_model_repo(tmp_path), prediction_log=True, data_dir=tmp_path / "data"
    )
    with running_server(settings, grpc=False) as running:
        text = httpx.get(f"{running.url}/metrics", timeout=10).text
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    # a counter's family is typed without its _total, a histogram's without _bucket/_count/_sum
    served = families | {f"{f}_total" for f in families}
    assert names <= served, f"not on /metrics: {sorted(names - served)}"
