#!/usr/bin/python3
"""HTTP image server for virtnode's tests: serves files from --root on 127.0.0.1 and
counts the GET requests per path, so a test can prove that N builds downloaded once.

  GET /<file>                 the file (single Range supported)
  GET /slow/<KiBps>/<file>    the file, throttled to KiBps
  GET /truncate/<file>        announces the full length, sends half, closes
  GET /status/<code>          an empty reply with that status
  GET /_stats                 {"<path>": count, ...} of GETs so far
  POST /_reset                clears the counts
  PUT /uploads/<file>         stores the body (Content-Length) as <root>/uploads/<file>;
                              201, or 507 after /_fail_puts/<n> asked for n failures
"""
import argparse
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {}
lock = threading.Lock()
fail_puts = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)

    def _send_empty(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):
        m = re.match(r"^/uploads/([A-Za-z0-9._-]+)$", self.path.split("?", 1)[0])
        length = self.headers.get("Content-Length")
        if not m or length is None:
            self._send_empty(400)
            return
        left = int(length)
        with lock:
            fail = fail_puts[0] > 0
            if fail:
                fail_puts[0] -= 1
        folder = os.path.join(self.root, "uploads")
        os.makedirs(folder, exist_ok=True)
        part = os.path.join(folder, m.group(1) + ".part")
        with open(part, "wb") as f:
            while left > 0:
                chunk = self.rfile.read(min(65536, left))
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
        if left or fail:
            os.unlink(part)
            self._send_empty(507 if fail else 400)
            return
        os.replace(part, os.path.join(folder, m.group(1)))
        self._send_empty(201)

    def do_POST(self):
        m = re.match(r"^/_fail_puts/(\d+)$", self.path)
        if m:
            with lock:
                fail_puts[0] = int(m.group(1))
            self._send_empty(204)
            return
        if self.path == "/_reset":
            with lock:
                counts.clear()
            self._send_empty(204)
        else:
            self._send_empty(404)

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        if self.path == "/_stats":
            with lock:
                body = json.dumps(counts).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        with lock:
            counts[self.path] = counts.get(self.path, 0) + 1
        self._serve(head=False)

    def _serve(self, head):
        path = self.path.split("?", 1)[0]
        rate = None
        truncate = False
        m = re.match(r"^/status/(\d{3})$", path)
        if m:
            self._send_empty(int(m.group(1)))
            return
        m = re.match(r"^/slow/(\d+)(/.*)$", path)
        if m:
            rate = int(m.group(1)) * 1024
            path = m.group(2)
        if path.startswith("/truncate/"):
            truncate = True
            path = path[len("/truncate"):]
        full = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
        if not full.startswith(os.path.realpath(self.root) + os.sep) or not os.path.isfile(full):
            self._send_empty(404)
            return
        size = os.path.getsize(full)
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        code = 200
        if rng:
            m = re.match(r"bytes=(\d*)-(\d*)$", rng)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else size - 1
                else:
                    start = max(0, size - int(m.group(2)))
                end = min(end, size - 1)
                if start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", "bytes */%d" % size)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = 206
        length = end - start + 1
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        if head:
            return
        to_send = length // 2 if truncate else length
        with open(full, "rb") as f:
            f.seek(start)
            t0 = time.monotonic()
            sent = 0
            while sent < to_send:
                chunk = f.read(min(65536, to_send - sent))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(chunk)
                if rate:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        if truncate:
            self.close_connection = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    Handler.root = a.root
    ThreadingHTTPServer.daemon_threads = True
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.serve_forever()


if __name__ == "__main__":
    main()
