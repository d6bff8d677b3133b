"""The local mirror server: byte ranges, containment to its root, the command line."""

from __future__ import annotations

import http.client
import re
import select
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from instructcv_core.data.mirror_server import (
    MirrorServer,
    RangeNotSatisfiable,
    parse_range,
    serve_directory,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable modulo 256


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "data.bin").write_bytes(DATA)
    (root / "sub" / "nested.txt").write_text("nested")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    with serve_directory(root) as running:
        yield running


def request(server: MirrorServer, path: str, headers: dict[str, str] | None = None, method="GET"):
    """Send one raw request (no client-side path normalisation); return (response, body)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", (0, 100)),
        ("bytes=10-", (10, 100)),
        ("bytes=10-19", (10, 20)),
        ("bytes=90-500", (90, 100)),  # a last byte past the end is clamped
        ("bytes=-30", (70, 100)),  # suffix: the last 30 bytes
        ("bytes=-500", (0, 100)),
        ("bytes=20-10", None),  # invalid: ignored, whole file
        ("bytes=0-1,5-6", None),  # several ranges: not supported, whole file
        ("items=0-5", None),
        ("bytes=abc", None),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-200", "bytes=-0"])
def test_parse_range_unsatisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_whole_file(server):
    response, body = request(server, "/data.bin")
    assert response.status == 200
    assert response.getheader("Content-Length") == str(len(DATA))
    assert response.getheader("Accept-Ranges") == "bytes"
    assert response.getheader("Content-Range") is None
    assert body == DATA


def test_open_ended_range(server):
    response, body = request(server, "/data.bin", {"Range": "bytes=1000-"})
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes 1000-{len(DATA) - 1}/{len(DATA)}"
    assert response.getheader("Content-Length") == str(len(DATA) - 1000)
    assert body == DATA[1000:]


def test_closed_range(server):
    response, body = request(server, "/data.bin", {"Range": "bytes=300-399"})
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes 300-399/{len(DATA)}"
    assert response.getheader("Content-Length") == "100"
    assert body == DATA[300:400]


def test_range_past_the_end_is_416(server):
    response, body = request(server, "/data.bin", {"Range": f"bytes={len(DATA)}-"})
    assert response.status == 416
    assert response.getheader("Content-Range") == f"bytes */{len(DATA)}"
    assert body == b""


def test_head_sends_headers_only(server):
    response, body = request(server, "/data.bin", method="HEAD")
    assert response.status == 200
    assert response.getheader("Content-Length") == str(len(DATA))
    assert body == b""


def test_nested_file_and_query_string(server):
    response, body = request(server, "/sub/nested.txt?download=1")
    assert (response.status, body) == (200, b"nested")


@pytest.mark.parametrize(
    "path",
    [
        "/../outside/secret.txt",
        "/sub/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/sub/..%2f..%2foutside%2fsecret.txt",
        "//etc/passwd",
        "/sub",  # a folder: no listings
        "/missing.bin",
    ],
)
def test_nothing_outside_root_or_missing_is_served(server, path):
    response, body = request(server, path)
    assert response.status == 404
    assert b"secret" not in body


def test_symlink_leading_outside_root_is_refused(server):
    link = server.root / "escape.txt"
    link.symlink_to(server.root.parent / "outside" / "secret.txt")
    response, body = request(server, "/escape.txt")
    assert response.status == 404
    assert b"secret" not in body


def test_close_releases_the_port(tmp_path):
    server = serve_directory(tmp_path)
    host, port = server.host, server.port
    server.close()
    server.close()  # a second close is harmless
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(host, port, timeout=2).connect()


def test_command_line_serves_until_interrupted(tmp_path):
    (tmp_path / "data.bin").write_bytes(DATA)
    command = [sys.executable, "-m", "instructcv_core.data.mirror_server", str(tmp_path), "--port", "0"]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            assert ready, "the server printed nothing within 20 s"
            line = proc.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            assert match, line
            with urllib.request.urlopen(match.group(1) + "data.bin", timeout=5) as response:
                assert response.read() == DATA
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
