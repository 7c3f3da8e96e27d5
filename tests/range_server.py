"""A loopback HTTP server for download tests: serves files from memory, with HTTP Range."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RangeServer(ThreadingHTTPServer):
    """Serves `files` by name; honours `Range: bytes=N-` unless told not to; logs requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.requests: list[tuple[str, str | None, int]] = []  # path, Range header, bytes sent

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class RangeHandler(BaseHTTPRequestHandler):
    server: RangeServer

    def do_GET(self) -> None:
        data = self.server.files.get(self.path.lstrip("/"))
        wanted = self.headers.get("Range")
        if data is None:
            self.server.requests.append((self.path, wanted, 0))
            self.send_error(404)
            return
        start = 0
        if wanted and self.server.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.server.requests.append((self.path, wanted, len(body)))  # before the client is done
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serving() -> Iterator[RangeServer]:
    """A `RangeServer` on 127.0.0.1 (a free port) in a thread, shut down on exit."""
    httpd = RangeServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
