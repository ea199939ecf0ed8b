"""The repo's own default config and every example pass `sluice check`, and
their rule specs pass through `sluice test` (busted in the real sandbox)."""
import glob
import os

import pytest

from conftest import run_sluice

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIGS = [os.path.join(ROOT, "sluice.conf.lua")] + sorted(
    glob.glob(os.path.join(ROOT, "examples", "*", "*.conf.lua")))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_passes_check(config):
    r = run_sluice("check", "-c", config)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(config + ": ok")
    assert r.stderr == ""


def test_every_rule_in_rules_and_examples_has_a_spec():
    rules = [p for p in glob.glob(os.path.join(ROOT, "rules", "*.lua")) +
             glob.glob(os.path.join(ROOT, "examples", "*", "rules", "*.lua"))
             if not p.endswith("_spec.lua")]
    assert rules
    missing = [p for p in rules if not os.path.exists(p[:-4] + "_spec.lua")]
    assert missing == []


def test_sluice_test_runs_the_specs_in_the_sandbox():
    r = run_sluice("test", "rules", "examples", cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failures / 0 errors" in r.stdout
