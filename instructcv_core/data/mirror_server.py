"""A static file server for a local dataset mirror, with byte ranges so downloads can resume.

Host the mini-benchmark or real archives on a LAN (or for tests, on loopback)::

    python -m instructcv_core.data.mirror_server /data/archives --port 8000

then list ``http://<host>:8000/<file name>`` among a `RemoteFile`'s URLs. From Python,
`serve_directory` starts the same server in a background thread.

Only files under the root are served (no directory listings; ``..`` and symlinks leading outside
are refused with 404). Every response carries ``Content-Length``; ``Range: bytes=a-``,
``bytes=a-b`` and ``bytes=-n`` get a 206, a range starting past the end a 416. IPv4 only.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(ValueError):
    """A ``Range`` header asks only for bytes past the end of the file (HTTP 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte span ``[start, stop)`` a ``Range`` header asks of a ``size``-byte file.

    None means "send the whole file": no header, or one RFC 9110 says to ignore (another unit,
    several ranges, bad syntax, last byte before first). Raises `RangeNotSatisfiable` when the
    span starts at or after ``size``.
    """
    if header is None or size == 0:
        return None
    match = _BYTE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:  # "bytes=-n": the last n bytes
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    stop = min(int(last) + 1, size) if last else size
    return start, stop


class MirrorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows the folder it serves (``root``, resolved)."""

    def __init__(self, address: tuple[str, int], handler_class: type, root: Path) -> None:
        self.root = root
        super().__init__(address, handler_class)


class MirrorRequestHandler(BaseHTTPRequestHandler):
    """Answers GET and HEAD with the files under ``server.root``.

    Built to be subclassed (tests inject faults this way): override `send_file_body` to cut a
    response short, `requested_range` to ignore ``Range``, or ``do_GET`` to fail some requests
    and call ``super().do_GET()`` for the others.
    """

    server: MirrorHTTPServer
    # HTTP/1.1 because 206 and Range belong to it; every response sends Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "instructcv-mirror/0.1"
    chunk_size = 1 << 16  # bytes written per send

    def do_GET(self) -> None:
        self.serve_file(include_body=True)

    def do_HEAD(self) -> None:
        self.serve_file(include_body=False)

    def serve_file(self, *, include_body: bool) -> None:
        path = self.resolve_file()
        try:
            source = path.open("rb") if path is not None else None
        except OSError:  # removed or made unreadable since resolve_file looked
            source = None
        if source is None:
            self.send_error(HTTPStatus.NOT_FOUND, "No such file under the mirror root")
            return
        with source:
            size = os.fstat(source.fileno()).st_size
            try:
                span = self.requested_range(size)
            except RangeNotSatisfiable:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, stop = span if span is not None else (0, size)
            self.send_response(HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK)
            # Always octet-stream: a guessed "Content-Encoding: gzip" for .tar.gz would make some
            # clients decompress the archive on the fly, and its checksum would no longer match.
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(stop - start))
            self.send_header("Accept-Ranges", "bytes")
            if span is not None:
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            self.end_headers()
            if include_body:
                source.seek(start)
                try:
                    self.send_file_body(source, stop - start)
                except (BrokenPipeError, ConnectionResetError):
                    logger.debug("%s: client went away mid-body", self.path)
                    self.close_connection = True

    def requested_range(self, size: int) -> tuple[int, int] | None:
        """The ``[start, stop)`` span to send, None for the whole file (see `parse_range`)."""
        return parse_range(self.headers.get("Range"), size)

    def send_file_body(self, source: BinaryIO, length: int) -> None:
        """Write ``length`` bytes of ``source`` (already at the first byte) to the client."""
        remaining = length
        while remaining:
            chunk = source.read(min(self.chunk_size, remaining))
            if not chunk:
                # The file shrank while being served: the body is shorter than the Content-Length
                # sent, so the connection cannot carry another response.
                self.close_connection = True
                return
            self.wfile.write(chunk)
            remaining -= len(chunk)

    def resolve_file(self) -> Path | None:
        """The file the request path names, or None unless it is a regular file under the root.

        Resolving before the containment check defeats ``..`` (also percent-encoded) and
        symlinks that point outside the root.
        """
        url_path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        root = self.server.root
        candidate = (root / url_path.lstrip("/")).resolve()
        if candidate.is_relative_to(root) and candidate.is_file():
            return candidate
        return None

    def log_message(self, format: str, *args: object) -> None:
        # To logging rather than stderr, so that library users and tests decide what is shown.
        logger.info("%s %s", self.address_string(), format % args)


class MirrorServer:
    """A mirror server running in a daemon thread; ``url`` ends with "/" (``url + name``)."""

    def __init__(self, httpd: MirrorHTTPServer) -> None:
        self._httpd = httpd
        self._closed = False
        # A short poll interval: close() waits for the serving loop's next poll.
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"mirror-server-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def root(self) -> Path:
        return self._httpd.root

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def close(self) -> None:
        """Stop serving and release the port (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MirrorServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_directory(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    handler_class: type[MirrorRequestHandler] = MirrorRequestHandler,
) -> MirrorServer:
    """Serve the files under ``root`` at ``http://host:port/`` from a background thread.

    ``port=0`` picks a free port (read it back from ``.url``). ``host`` defaults to loopback:
    pass "0.0.0.0" to serve the LAN.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(
            f"{root}: not a folder; pass the folder that holds the files to serve"
        )
    return MirrorServer(MirrorHTTPServer((host, port), handler_class, root))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m instructcv_core.data.mirror_server",
        description="Serve a folder of dataset files over HTTP, with byte ranges (resumable).",
    )
    parser.add_argument("directory", type=Path, help="folder whose files are served")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: the LAN)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with serve_directory(args.directory, host=args.host, port=args.port) as server:
        print(f"Serving {server.root} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
