"""Durable spool under kill -9 (issue 5): tests/tools/spool_crash appends
numbered records, delivers and acks behind them and prints every sync it
confirmed; we SIGKILL it at random moments, then check that every confirmed
record is still there exactly once and in order, that the ack never went
back, and that the sequence carries on across restarts.

Standalone: needs only the driver binary (make build/tools/spool_crash).
    /usr/bin/python3 -m pytest -q tests/integration/test_spool_crash.py
    /usr/bin/python3 tests/integration/test_spool_crash.py
Environment: BUILD (default build) or SPOOL_CRASH_BIN; SPOOL_CRASH_SEED.
"""

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BIN = os.environ.get("SPOOL_CRASH_BIN") or os.path.join(
    ROOT, os.environ.get("BUILD", "build"), "tools", "spool_crash")

DURABLE_RE = re.compile(r"^durable (\d+) acked (\d+)$")
REPLAY_RE = re.compile(
    r"^replay first=(\d+) last=(\d+) count=(\d+) ack=(\d+) next=(\d+)$")
OPEN_RE = re.compile(r"^open rc=0 .*quarantine_files=(\d+) "
                     r"quarantined_bytes=(\d+) lost=(\d+) gaps=(\d+)")


SANITIZER_RE = re.compile(r"ERROR: AddressSanitizer|runtime error:|"
                          r"ERROR: LeakSanitizer|ThreadSanitizer")


def run_and_kill(spool_dir, args, after):
    """Start the driver, SIGKILL it `after` seconds into its work, return its
    stdout lines."""
    err_path = spool_dir + ".stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([BIN, spool_dir, "run"] + args,
                                stdout=subprocess.PIPE, stderr=err_file,
                                text=True)
    lines = []

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    # kill at a random moment once it is under way: the replay and the
    # first sync of a large leftover can take a while
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not any(
            l.startswith("durable ") for l in list(lines)):
        time.sleep(0.01)
    time.sleep(after)
    with open(err_path) as f:
        err = f.read()
    assert proc.poll() is None, "driver exited early:\n%s\n%s" % (
        "\n".join(lines[-20:]), err)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    reader.join(timeout=10)
    with open(err_path) as f:
        err = f.read()
    assert not SANITIZER_RE.search(err), err
    return lines


def verify(spool_dir, durable, acked):
    out = subprocess.run([BIN, spool_dir, "verify", "--durable", str(durable),
                          "--acked", str(acked)],
                         capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout.splitlines(), out.stderr


def test_spool_keeps_every_confirmed_record_across_sigkill():
    assert os.access(BIN, os.X_OK), "build the driver first: %s" % BIN
    seed = int(os.environ.get("SPOOL_CRASH_SEED") or random.randrange(1 << 30))
    rnd = random.Random(seed)
    print("seed", seed)
    with tempfile.TemporaryDirectory(prefix="sl_spool_crash_") as tmp:
        spool_dir = os.path.join(tmp, "spool")
        last_next = 1
        quarantined = 0
        for i in range(5):
            if i % 2 == 0:
                mode = ["--sync-every", str(rnd.choice([1, 10, 100, 1000]))]
            else:
                mode = ["--sync-ms", str(rnd.choice([5, 20, 100]))]
            args = mode + ["--segment", str(rnd.choice([16384, 65536, 262144])),
                           "--max-bytes", str(16 << 20),
                           "--seed", str(rnd.randrange(1 << 30))]
            lines = run_and_kill(spool_dir, args, rnd.uniform(0.05, 1.0))
            ctx = "run %d %s (seed %d)" % (i, " ".join(args), seed)

            # the run itself checked what the previous kill left
            assert "check ok" in lines, "%s:\n%s" % (ctx, "\n".join(lines[:20]))
            m = [OPEN_RE.match(l) for l in lines if OPEN_RE.match(l)]
            assert m, ctx
            quarantined += int(m[0].group(1))

            confirmed = [DURABLE_RE.match(l) for l in lines]
            confirmed = [c for c in confirmed if c]
            assert confirmed, "%s: no sync confirmed" % ctx
            durable = int(confirmed[-1].group(1))
            acked = int(confirmed[-1].group(2))
            assert durable >= last_next - 1, ctx

            rc, out, err = verify(spool_dir, durable, acked)
            assert rc == 0, "%s: verify failed:\n%s\n%s" % (
                ctx, "\n".join(out), err)
            assert not SANITIZER_RE.search(err), err
            replay = [REPLAY_RE.match(l) for l in out if REPLAY_RE.match(l)]
            assert replay, ctx
            first, last, count, ack, nxt = map(int, replay[0].groups())
            # confirmed records are all there, once, in order
            assert ack >= acked, ctx
            assert nxt > durable, ctx
            if count:
                assert first == ack + 1 and last == nxt - 1, ctx
                assert count == last - first + 1, ctx
            # and seqs never go back across restarts
            assert nxt >= last_next, ctx
            last_next = nxt
        print("ok: 5 kills, next seq %d, %d quarantine files" % (
            last_next, quarantined))


if __name__ == "__main__":
    test_spool_keeps_every_confirmed_record_across_sigkill()
    sys.exit(0)
