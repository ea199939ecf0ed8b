"""ev.payload through the real binary (issue 14): a rule that only reads
the payload, whatever its keys, sends it on byte for byte (these payloads
went to the dead letter, or lost pairs, when reading decoded them into
tables); a rule that writes one field changes only that field's bytes."""
import msgpack

from conftest import free_port, pack, send_events, wait_for

READER = """
return {
  on_event = function(ev)
    local n = 0
    for k, v in pairs(ev.payload) do n = n + 1 end
    if ev.payload.a ~= nil or n >= 0 then return "out" end
  end,
}
"""

WRITER = """
return {
  on_event = function(ev)
    if ev.payload.amount > 1000 then ev.payload.priority = "high" end
    return "out"
  end,
}
"""

ODD = [
    "82 c0 01 a161 02",                      # a nil key
    "82 9101 01 a161 02",                    # an array key
    "82 81a16101 02 a161 03",                # a map key
    "82 d40541 01 a161 02",                  # an ext key
    "82 01a161 cb3ff0000000000000a162",      # 1 and 1.0
    "82 a16101 c4016102",                    # a string and a binary "a"
    "82 cf0020000000000001a178 cf0020000000000000a179",  # ints past 2^53
    "83 a16101 a16102 a16103",               # a repeated key
    "81 a161 ca3f800000",                    # a float32
]


def event_bytes(topic, payload_hex):
    """A native event whose payload is the given msgpack bytes."""
    payload = bytes.fromhex(payload_hex.replace(" ", ""))
    return b"\x82" + pack("topic") + pack(topic) + pack("payload") + payload, payload


def start(sluice, tmp_path, rule):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_rule.lua").write_text(rule)
    port = free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "file", path = "out.msgpack", format = "msgpack" } },
  rules = { dir = "%s" },
}""" % (port, d))
    return eng, "127.0.0.1:%d" % port


def read_events(path):
    """The events in a msgpack file output, with maps as lists of pairs (a
    payload key may be a nil, a list or a map) and strings as bytes."""
    with open(path, "rb") as f:
        return list(msgpack.Unpacker(f, raw=True, object_pairs_hook=list,
                                     strict_map_key=False))


def test_a_rule_that_reads_odd_payloads_sends_them_on_byte_for_byte(sluice, tmp_path):
    eng, addr = start(sluice, tmp_path, READER)
    events = [event_bytes("t%d" % i, h) for i, h in enumerate(ODD)]
    send_events(addr, [e for e, _ in events])
    path = eng.path("out.msgpack")
    wait_for(lambda: len(read_events(path)) == len(ODD), what="every event at the output")
    data = open(path, "rb").read()
    for _, payload in events:
        assert payload in data, payload.hex()  # the same bytes, in place
    assert eng.stop() == 0


def test_a_rule_that_writes_one_field_changes_only_its_bytes(sluice, tmp_path):
    eng, addr = start(sluice, tmp_path, WRITER)
    # amount, a float 1.0, a float32 and a binary: the others keep their types
    rest = "a166cb3ff0000000000000 a167ca3f800000 a162c40101"
    big, _ = event_bytes("big", "84 a6616d6f756e74cd07d0 " + rest)
    small, small_payload = event_bytes("small", "84 a6616d6f756e7405 " + rest)
    send_events(addr, [big, small])
    path = eng.path("out.msgpack")
    wait_for(lambda: len(read_events(path)) == 2, what="both events at the output")
    data = open(path, "rb").read()
    want = bytes.fromhex(("85 a6616d6f756e74cd07d0 " + rest +
                          " a87072696f72697479 a468696768").replace(" ", ""))
    assert want in data  # the new field after the others, their bytes kept
    assert small_payload in data  # untouched: as it came
    assert eng.stop() == 0
