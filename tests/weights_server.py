"""A local HTTP server for weights downloads: serves synthetic files, honours Range requests,
and can cut a response short (a download interrupted mid-file)."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from avda.weights import PublishedFile


@dataclasses.dataclass
class FileServer:
    base: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    # path -> number of bytes to send before dropping the connection (Content-Length is full)
    cut: dict[str, int] = dataclasses.field(default_factory=dict)
    ignore_range: bool = False
    ranges: list[str | None] = dataclasses.field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"


@contextmanager
def serve() -> Iterator[FileServer]:
    state = FileServer(base="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path.lstrip("/")
            data = state.files.get(path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            wanted = self.headers.get("Range")
            state.ranges.append(wanted)
            start = 0
            if wanted and not state.ignore_range:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            limit = state.cut.pop(path, None)
            if limit is not None:
                self.wfile.write(body[:limit])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def synthetic_entry(name: str, url: str, **fields) -> PublishedFile:
    """A registry entry for a synthetic file (checksums computed from the test's own bytes)."""
    values = dict(
        name=name,
        file_name=f"{name}.pt",
        url=url,
        page="http://127.0.0.1/",
        loader="i3d",
        modality="rgb",
        layout="piergiaj",
        wrapping="plain state dict",
        manifest="i3d_piergiaj_rgb.json",
        licence="test licence",
    )
    values.update(fields)
    return PublishedFile(**values)
