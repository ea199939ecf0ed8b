"""Scale-out on NATS JetStream (issue 12, item 4), the long version: three
sluice instances on one durable pull consumer, every message processed
exactly once in the normal case; kill -9 one mid-stream: the others take
its share, nothing is lost, and the messages processed twice (the killed
one's in-flight window, at most max_ack_pending) are printed. The quick
two-instance version without a kill runs in `make test`
(tests/integration/test_nats.py).

Run: make chaos   (or /usr/bin/python3 -m pytest -q -s tests/chaos/test_nats_scaleout.py)
"""

from test_nats import nats, scale_out  # noqa: F401  (nats is a fixture)


def test_three_instances_share_one_durable_consumer_exactly_once(sluice, tmp_path, nats):
    scale_out(sluice, tmp_path, nats, 3, 6000, kill_one=False)


def test_three_instances_kill9_one_mid_stream_loses_nothing(sluice, tmp_path, nats):
    scale_out(sluice, tmp_path, nats, 3, 6000, kill_one=True)


def test_two_instances_kill9_one_loses_nothing(sluice, tmp_path, nats):
    scale_out(sluice, tmp_path, nats, 2, 2000, kill_one=True)
