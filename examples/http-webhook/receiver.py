"""A webhook receiver for the example: POST any path with a JSON array,
NDJSON or gzip of either; checks `Authorization: Bearer $HOOK_TOKEN`
(default dev-token) and appends {"path": ..., "event": ...} lines to the
output file. Usage: python3 receiver.py HOST:PORT OUT.ndjson"""
import gzip
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = os.environ.get("HOOK_TOKEN", "dev-token")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.answer(401, "bad token")
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            if self.headers.get("Content-Type") == "application/json":
                events = json.loads(body)
                events = events if isinstance(events, list) else [events]
            else:
                events = [json.loads(l) for l in body.splitlines() if l]
        except ValueError as e:
            return self.answer(400, "not JSON: %s" % e)
        with open(OUT, "a") as f:
            for ev in events:
                f.write(json.dumps({"path": self.path, "event": ev}) + "\n")
        self.answer(200, "ok")


if __name__ == "__main__":
    host, port = sys.argv[1].rsplit(":", 1)
    OUT = sys.argv[2]
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
