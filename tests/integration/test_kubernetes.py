"""The Kubernetes sidecar example (issue 11, item 7): the manifest parses,
its config passes `sluice check`, and the config runs as the pod would run
it: the rules ConfigMap laid out the way the kubelet writes it (files as
links through ..data, updated by renaming a new ..data over the old one),
probes on /healthz and /readyz, the rules reloaded by sluice's own watcher
when the ConfigMap changes, readiness kept while the aggregator is down.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_kubernetes.py
"""

import json
import os

import pytest

from conftest import Engine, Sink, free_port, run_sluice, wait_for
from helpers_http import curl

yaml = pytest.importorskip("yaml")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MANIFEST = os.path.join(ROOT, "examples", "kubernetes", "sidecar.yaml")


def docs():
    with open(MANIFEST) as f:
        return {d["metadata"]["name"]: d for d in yaml.safe_load_all(f)}


def sluice_container(d):
    spec = d["web"]["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == "sluice"]
    return spec, c


def test_the_manifest_parses_and_wires_config_rules_state_and_probes():
    d = docs()
    assert sorted(d) == ["sluice-config", "sluice-rules", "web"]
    assert d["sluice-config"]["kind"] == d["sluice-rules"]["kind"] == "ConfigMap"
    assert d["web"]["kind"] == "Deployment"
    spec, c = sluice_container(d)
    assert len(spec["containers"]) == 2  # the application and sluice
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "sluice-config"
    assert volumes["rules"]["configMap"]["name"] == "sluice-rules"
    assert volumes["state"]["emptyDir"] == {}
    conf = d["sluice-config"]["data"]["sluice.conf.lua"]
    assert c["args"] == ["run", "-c", mounts["config"] + "/sluice.conf.lua"]
    assert 'state_dir = "%s"' % mounts["state"] in conf
    # rules.dir is relative to the config's folder
    assert 'dir = "../rules"' in conf
    assert os.path.normpath(mounts["config"] + "/../rules") == mounts["rules"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["admin"]
    assert 'admin = { listen = "0.0.0.0:%d" }' % port in conf
    # the application reaches sluice's HTTP input on localhost
    (app,) = [x for x in spec["containers"] if x["name"] == "app"]
    url = {e["name"]: e["value"] for e in app["env"]}["EVENTS_URL"]
    assert url.startswith("http://127.0.0.1:8088/") and '"127.0.0.1:8088"' in conf


def atomic_write(folder, files, version):
    """What the kubelet does for a ConfigMap volume: the files in a new
    hidden folder, a ..data link to it renamed over the old one, and each
    visible name a link through ..data."""
    ts = folder / ("..v%d" % version)
    ts.mkdir()
    for name, text in files.items():
        (ts / name).write_text(text)
    tmp = folder / "..data_tmp"
    os.symlink(ts.name, tmp)
    os.rename(tmp, folder / "..data")
    for name in files:
        link = folder / name
        if not os.path.lexists(link):
            os.symlink("..data/" + name, link)


def materialize(tmp_path, conf, rules):
    confdir = tmp_path / "etc/sluice/conf"
    rulesdir = tmp_path / "etc/sluice/rules"
    confdir.mkdir(parents=True)
    rulesdir.mkdir(parents=True)
    atomic_write(confdir, {"sluice.conf.lua": conf}, 1)
    atomic_write(rulesdir, rules, 1)
    return confdir / "sluice.conf.lua", rulesdir


def test_the_manifests_config_and_rules_pass_sluice_check(tmp_path):
    d = docs()
    config, _ = materialize(tmp_path, d["sluice-config"]["data"]["sluice.conf.lua"],
                            d["sluice-rules"]["data"])
    r = run_sluice("check", "-c", config)
    assert r.returncode == 0, r.stderr
    assert "1 inputs, 2 outputs, 1 routes, rules in" in r.stdout


def test_the_sidecar_runs_reloads_its_configmap_rules_and_stays_ready(
        sluice, tmp_path):
    d = docs()
    conf = d["sluice-config"]["data"]["sluice.conf.lua"]
    rules = d["sluice-rules"]["data"]
    sink = Sink()
    http, admin = free_port(), free_port()
    # the pod's addresses and folders, moved to this machine's
    conf = (conf.replace("127.0.0.1:8088", "127.0.0.1:%d" % http)
                .replace("0.0.0.0:9090", "127.0.0.1:%d" % admin)
                .replace("central.logging.svc:7400", sink.address)
                .replace('"/var/lib/sluice"', json.dumps(str(tmp_path / "state"))))
    config, rulesdir = materialize(tmp_path, conf, rules)
    eng = Engine(sluice, "sidecar", tmp_path, config, (), None)
    eng.config_dict = None
    sluice.engines.append(eng)
    eng._start()
    base = "http://127.0.0.1:%d" % admin
    assert curl(base + "/healthz").status == 200
    assert curl(base + "/readyz").status == 200
    ingest = "http://127.0.0.1:%d/v1/events" % http
    assert curl(ingest, data=json.dumps({"topic": "t", "payload": 1}),
                content_type="application/json").status == 202
    (e,) = sink.wait(1)
    assert e["headers"]["x-origin"] == "web"
    # kubectl apply of a changed rules ConfigMap, as the kubelet lands it
    atomic_write(rulesdir, {"10_tag.lua": rules["10_tag.lua"].replace(
        '"web"', '"web-v2"')}, 2)
    eng.wait_log("rules reloaded", trigger="watch", timeout=10)
    assert curl(ingest, data=json.dumps({"topic": "t", "payload": 2}),
                content_type="application/json").status == 202
    events = sink.wait(2)
    assert events[1]["headers"]["x-origin"] == "web-v2"
    # the aggregator goes away: alive, still ready, the output shows failing
    sink.close()
    wait_for(lambda: curl(base + "/healthz").json()["outputs"]["central"]
             == "failing", 10, interval=0.05, what="central to show failing")
    r = curl(base + "/readyz")
    assert r.status == 200 and r.json()["outputs"]["central"] == "failing"
