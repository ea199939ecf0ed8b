"""Kafka test helpers: librdkafka's mock cluster (build/tools/kafka_mock) as
a process on loopback, and Debian's kcat as the independent producer and
consumer. Used by tests/integration/test_kafka.py and tests/chaos."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import SLUICE_BIN, wait_for

KAFKA_MOCK = Path(SLUICE_BIN).resolve().parent / "tools" / "kafka_mock"


class Mock:
    """kafka_mock TOPIC:N ...; .bootstrap is "127.0.0.1:PORT"."""

    def __init__(self, folder, topics, down=False, errors=()):
        """errors: (api_key, error_code, count) answered to the next count
        requests of that API (kafka_mock -e)."""
        self.out_path = Path(folder) / "kafka_mock.out"
        args = [str(KAFKA_MOCK)] + (["-d"] if down else [])
        for e in errors:
            args += ["-e", "%d:%d:%d" % tuple(e)]
        args += list(topics)
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.out,
                                     stderr=subprocess.STDOUT)
        self.bootstrap = None

        def ready():
            text = self.out_path.read_text()
            for line in text.splitlines():
                if line.startswith("bootstrap="):
                    self.bootstrap = line.split("=", 1)[1]
                    return True
            assert self.proc.poll() is None, text
            return False
        wait_for(ready, timeout=10, what="kafka_mock's bootstrap line")

    def up(self):
        self.proc.send_signal(signal.SIGUSR2)

    def down(self):
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


def produce(bootstrap, topic, lines, timeout=30):
    """kcat -P -K: : each line "key:value" (or a value without a key when
    it has no colon and keyed is False)."""
    data = "".join(l + "\n" for l in lines)
    subprocess.run(["kcat", "-b", bootstrap, "-P", "-t", topic, "-K:"],
                   input=data.encode(), check=True, timeout=timeout,
                   capture_output=True)


def produce_raw(bootstrap, topic, value, key=None, timeout=30):
    """One message whose value is exactly value (bytes), from a file."""
    import tempfile
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(value)
        name = f.name
    try:
        args = ["kcat", "-b", bootstrap, "-P", "-t", topic]
        if key is not None:
            args += ["-k", key]
        subprocess.run(args + [name], check=True, timeout=timeout,
                       capture_output=True)
    finally:
        os.unlink(name)


def consume(bootstrap, topic, timeout=30):
    """Every message of topic from the beginning: [(key, value, partition)],
    values as text (the kafka output's format = "json")."""
    r = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", topic, "-e", "-o", "beginning",
         "-q", "-f", "%k\t%p\t%s\n"],
        capture_output=True, timeout=timeout)
    out = []
    for line in r.stdout.decode(errors="replace").splitlines():
        if not line:
            continue
        k, p, v = line.split("\t", 2)
        out.append((k, int(p), v))
    return out


def consume_json(bootstrap, topic, timeout=30):
    """The values of topic as JSON events (format = "json")."""
    return [json.loads(v) for _, _, v in consume(bootstrap, topic, timeout)]


def wait_consumed(bootstrap, topic, n, timeout=60):
    """Poll with kcat until topic holds at least n messages; return them."""
    got = []

    def enough():
        got[:] = consume_json(bootstrap, topic)
        return len(got) >= n
    wait_for(enough, timeout=timeout, interval=0.5,
             what="%d messages on %s" % (n, topic))
    return got


def metric(text, name, **labels):
    """Sum of the samples of name matching labels in Prometheus text."""
    total = 0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all('%s="%s"' % (k, v) in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_all(bootstrap, topic, want, timeout=120):
    """Poll with kcat until every payload n in want is on topic (duplicates
    do not count towards it); return the Counter of n."""
    from collections import Counter
    got = Counter()

    def covered():
        got.clear()
        got.update(e["payload"]["n"] for e in consume_json(bootstrap, topic))
        return set(want) <= set(got)
    try:
        wait_for(covered, timeout=timeout, interval=0.5,
                 what="all %d events on %s" % (len(want), topic))
    except AssertionError:
        raise AssertionError("lost %d, e.g. %s" % (
            len(set(want) - set(got)), sorted(set(want) - set(got))[:10]))
    return got
