"""HTTP helpers for test_http.py and test_admin.py: curl as a subprocess,
a raw HTTP/1.1 client over a socket (for pipelining, keep-alive and slow
clients) and config builders for the http input and the admin server.
The engine fixture itself comes from conftest.py."""

import json
import socket
import subprocess
import time

from conftest import free_port, wait_for


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Response(%d, %r, %r)" % (self.status, self.headers, self.body[:300])


def _parse_head(raw):
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


def curl(url, *args, data=None, content_type=None, headers=(), timeout=10,
         method=None):
    """Run curl; returns a Response (the 100 Continue block skipped)."""
    cmd = ["curl", "-sS", "-i", "--max-time", str(timeout)]
    if method:
        cmd += ["-X", method]
    if content_type:
        cmd += ["-H", "Content-Type: " + content_type]
    for h in headers:
        cmd += ["-H", h]
    if data is not None:
        cmd += ["--data-binary", "@-"]
    cmd += list(args) + [url]
    r = subprocess.run(cmd, input=data if isinstance(data, bytes) or data is None
                       else data.encode(), capture_output=True, timeout=timeout + 5)
    assert r.returncode == 0, "curl failed (%d): %s" % (r.returncode, r.stderr)
    out = r.stdout
    while True:
        head, _, rest = out.partition(b"\r\n\r\n")
        status, hdrs = _parse_head(head)
        if status == 100:
            out = rest
            continue
        return Response(status, hdrs, rest)


class RawClient:
    """One HTTP/1.1 connection driven by hand."""

    def __init__(self, port, timeout=10, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by the engine")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status, headers = _parse_head(head)
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    self._line()
                    break
                body += self._exactly(size)
                self._line()
        else:
            body = self._exactly(int(headers.get("content-length", "0")))
        return Response(status, headers, body)

    def closed(self, timeout=5):
        """True once the engine closed the connection (EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def request(method, path, body=b"", content_type=None, headers=(),
            chunked=False):
    """The bytes of one request."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: test"]
    if content_type:
        lines.append("Content-Type: " + content_type)
    lines += list(headers)
    if isinstance(body, str):
        body = body.encode()
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        data = b""
        for i in range(0, len(body), 7):  # small chunks on purpose
            part = body[i:i + 7]
            data += b"%x\r\n%s\r\n" % (len(part), part)
        data += b"0\r\n\r\n"
    else:
        lines.append("Content-Length: %d" % len(body))
        data = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def http_input(port, **kw):
    cfg = {"name": "web", "type": "http", "listen": "127.0.0.1:%d" % port}
    cfg.update(kw)
    return cfg


def config(port, admin_port=None, inputs=None, outputs=None, routes=None,
           **top):
    cfg = {
        "inputs": inputs or [http_input(port)],
        "outputs": outputs or [{"name": "out", "type": "file",
                                "path": "out.ndjson"}],
        "routes": routes or [{"topics": "*", "to": "out"}],
    }
    if admin_port:
        cfg["admin"] = {"listen": "127.0.0.1:%d" % admin_port}
    cfg.update(top)
    return cfg


def metrics(admin_port, token=None):
    headers = ["Authorization: Bearer " + token] if token else []
    r = curl("http://127.0.0.1:%d/metrics" % admin_port, headers=headers)
    assert r.status == 200, r
    return r.body.decode()


def metric(text, metric_name, **labels):
    """The value of one sample in a Prometheus text, or None."""
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    key = "%s{%s}" % (metric_name, want) if labels else metric_name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        k, _, v = line.rpartition(" ")
        if k == key:
            return float(v)
    return None


def wait_metric(admin_port, metric_name, pred, timeout=10, **labels):
    """Poll /metrics until pred(value) holds; returns the value."""
    def check():
        v = metric(metrics(admin_port), metric_name, **labels)
        return (v,) if v is not None and pred(v) else None  # 0 is a value
    return wait_for(check, timeout, interval=0.05,
                    what="metric %s%r to satisfy the check" % (metric_name, labels))[0]


def ports(n):
    out = set()
    while len(out) < n:
        out.add(free_port())
    return sorted(out)


def elapsed(t0):
    return time.monotonic() - t0
