"""workers = N logs a rules load or reload once, from the main loop, with
the worker count (issue 14 item 4): not once per worker."""
import signal

from conftest import wait_for
from test_workers import post_reload, start, stamp_rule


def msgs(eng, text):
    return [l for l in eng.logs() if l.get("msg") == text]


def test_workers_reload_lines_are_written_once_with_the_worker_count(
        sluice, tmp_path):
    eng, rules, _, admin = start(sluice, tmp_path,
                                 {"10_v.lua": stamp_rule("a")}, workers=3)
    assert len(msgs(eng, "rules loaded")) == 1
    assert [l["workers"] for l in msgs(eng, "workers started")] == [3]
    (rules / "10_v.lua").write_text(stamp_rule("b"))
    assert post_reload(admin) == 200
    eng.signal(signal.SIGHUP)
    wait_for(lambda: len(msgs(eng, "config reloaded")) == 2, timeout=10,
             what="the SIGHUP reload")
    done = msgs(eng, "rules reloaded")
    assert [(l["trigger"], l["workers"]) for l in done] == [
        ("admin", 3), ("SIGHUP", 3)]
    # a broken file: one error line, from main, naming the worker count;
    # no worker's own "rejected" line
    (rules / "10_v.lua").write_text("return { on_event = ")
    assert post_reload(admin) != 200
    failed = msgs(eng, "rules reload failed on a worker; every worker keeps "
                       "the running rules")
    assert len(failed) == 1 and failed[0]["workers"] == 3
    assert "10_v.lua" in failed[0]["error"]
    assert msgs(eng, "rules reload rejected; the live version stays") == []
    # the config's own line carries no worker count (only the rules' do)
    assert all("workers" not in l for l in msgs(eng, "config reloaded"))
    assert len(msgs(eng, "rules reloaded")) == 2
