"""What the weights tests share: manifests written in a folder, the `weights` commands as
app.py runs them, and a loopback HTTP server (files from memory, HTTP Range) to fetch from.

A test module makes the fixtures with `server = pytest.fixture(scope="module")(serve_files)` and
`no_proxy = pytest.fixture(autouse=True)(direct_to_loopback)`.
"""

from __future__ import annotations

import argparse
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from app_module import load_app

from realtime.weights.cli import add_weights_commands


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_manifest(folder: Path, *entries: dict) -> Path:
    """A manifest.toml in `folder`; each entry gets the fields every entry needs."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for entry in entries:
        entry = {"url": "", "license": "Apache-2.0", "sha256": ""} | entry
        lines.append("[[checkpoint]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
        lines.append("")
    path = folder / "manifest.toml"
    path.write_text("\n".join(lines))
    return path


def app_main(*argv: str) -> int:
    """`python app.py ARGV...` in this process: app.py's `main`, its error handling included."""
    return load_app().main(list(argv))


def run_cli(*argv: str) -> int:
    """`python app.py weights ...` as app.py's parser runs it (errors raise)."""
    root = argparse.ArgumentParser(prog="app.py")
    add_weights_commands(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["weights", *argv])
    return args.run(args)


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


def serve_files() -> Iterator[RangeServer]:
    """The `server` fixture: a `RangeServer` for the test module."""
    with serving() as httpd:
        yield httpd


def direct_to_loopback(monkeypatch) -> None:
    """Requests to 127.0.0.1 go straight to it, whatever proxy the environment names."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
