"""`fetch` against loopback mirrors: verification, resume, retries, mirrors, idempotence."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from instructcv_core.data import download
from instructcv_core.data.datasets.base import RemoteFile
from instructcv_core.data.download import (
    MAX_RETRY_DELAY_S,
    ChecksumMismatch,
    DownloadError,
    fetch,
    file_digest,
    gdrive_download_url,
    verify_checksum,
)
from instructcv_core.data.mirror_server import MirrorRequestHandler, serve_directory

PAYLOAD = random.Random(0).randbytes(300_000)
CUT = 100_000  # where interrupted transfers stop


def checksum(algo: str, data: bytes = PAYLOAD) -> str:
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def remote(*urls: str, checksum: str | None = None, size: int | None = None) -> RemoteFile:
    return RemoteFile("data.bin", urls, checksum=checksum, size=size)


class Recorder(MirrorRequestHandler):
    """Serves the mirror and records (path, Range header) of every GET.

    Each subclass gets its own ``requests`` list; tests override `respond` to inject faults.
    """

    requests: ClassVar[list[tuple[str, str | None]]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.requests = []

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Range")))
        self.respond()

    def respond(self):
        super().do_GET()


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    return root


@pytest.fixture
def serve(mirror: Path):
    """Start a loopback mirror of ``mirror`` with a given handler class; closed after the test."""
    servers = []

    def start(handler_class: type[Recorder]):
        servers.append(serve_directory(mirror, handler_class=handler_class))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


@pytest.fixture(autouse=True)
def sleeps(monkeypatch) -> list[float]:
    """Back-off delays `fetch` asked for; nothing actually waits."""
    delays: list[float] = []
    monkeypatch.setattr(download, "_sleep", delays.append)
    return delays


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/data.bin"


# --- verified downloads ------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["md5", "sha1", "sha256"])
def test_fetch_verifies_published_checksum(serve, dest, algo):
    class Handler(Recorder):
        pass

    server = serve(Handler)
    url = server.url + "data.bin"
    result = fetch(remote(url, checksum=checksum(algo), size=len(PAYLOAD)), dest)

    assert result.path == dest / "data.bin"
    assert result.path.read_bytes() == PAYLOAD
    assert (result.url, result.bytes, result.reused) == (url, len(PAYLOAD), False)
    assert result.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    # Only the file and its verification record remain: no .part, no lock file.
    assert sorted(p.name for p in dest.iterdir()) == [".data.bin.verified.json", "data.bin"]
    assert Handler.requests == [("/data.bin", None)]


def test_fetch_file_url(mirror, dest):
    url = (mirror / "data.bin").as_uri()
    result = fetch(remote(url, checksum=checksum("sha256")), dest)
    assert result.path.read_bytes() == PAYLOAD
    assert result.url == url


def test_file_url_resumes_from_part(mirror, dest):
    # The .part's first bytes differ from the source: only a true resume (append from CUT)
    # produces this checksum.
    dest.mkdir()
    (dest / "data.bin.part").write_bytes(b"\0" * CUT)
    expected = b"\0" * CUT + PAYLOAD[CUT:]
    url = (mirror / "data.bin").as_uri()
    result = fetch(remote(url, checksum=checksum("sha256", expected)), dest)
    assert result.path.read_bytes() == expected


def test_checksum_mismatch_leaves_nothing_behind(serve, dest):
    class Handler(Recorder):
        pass

    url = serve(Handler).url + "data.bin"
    wrong = checksum("sha256", b"another file")
    with pytest.raises(ChecksumMismatch) as excinfo:
        fetch(remote(url, checksum=wrong), dest)

    message = str(excinfo.value)
    assert "data.bin" in message and url in message
    assert wrong in message
    assert hashlib.sha256(PAYLOAD).hexdigest() in message
    assert excinfo.value.actual == checksum("sha256")
    assert list(dest.iterdir()) == []


def test_size_mismatch_leaves_nothing_behind(serve, dest):
    class Handler(Recorder):
        pass

    url = serve(Handler).url + "data.bin"
    with pytest.raises(DownloadError, match="size mismatch") as excinfo:
        fetch(remote(url, size=len(PAYLOAD) + 1), dest)
    assert not isinstance(excinfo.value, ChecksumMismatch)
    assert f"expected {len(PAYLOAD) + 1} bytes, got {len(PAYLOAD)}" in str(excinfo.value)
    assert list(dest.iterdir()) == []


def test_without_published_checksum_records_sha256_and_warns(serve, dest, caplog):
    class Handler(Recorder):
        pass

    url = serve(Handler).url + "data.bin"
    with caplog.at_level(logging.WARNING, logger="instructcv_core.data.download"):
        result = fetch(remote(url), dest)
    assert result.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert "no published checksum" in caplog.text
    sidecar = json.loads((dest / ".data.bin.verified.json").read_text())
    assert sidecar["sha256"] == result.sha256 and sidecar["checksum"] is None


# --- resuming ----------------------------------------------------------------------------------


def test_interrupted_download_resumes_with_range(serve, dest):
    class CutFirstResponse(Recorder):
        def send_file_body(self, source, length):
            if len(self.requests) == 1:
                self.wfile.write(source.read(CUT))
                self.close_connection = True  # hang up CUT bytes into the body
                return
            super().send_file_body(source, length)

    url = serve(CutFirstResponse).url + "data.bin"
    result = fetch(remote(url, checksum=checksum("sha256")), dest, retries=2, backoff=0)

    assert result.path.read_bytes() == PAYLOAD
    assert CutFirstResponse.requests == [("/data.bin", None), ("/data.bin", f"bytes={CUT}-")]


def test_stale_part_from_previous_run_is_resumed(serve, dest):
    class Handler(Recorder):
        pass

    dest.mkdir()
    (dest / "data.bin.part").write_bytes(PAYLOAD[:CUT])
    url = serve(Handler).url + "data.bin"
    result = fetch(remote(url, checksum=checksum("md5")), dest)

    assert result.path.read_bytes() == PAYLOAD
    assert Handler.requests == [("/data.bin", f"bytes={CUT}-")]


def test_complete_part_gets_416_and_is_verified(serve, dest):
    class Handler(Recorder):
        pass

    dest.mkdir()
    (dest / "data.bin.part").write_bytes(PAYLOAD)
    url = serve(Handler).url + "data.bin"
    result = fetch(remote(url, checksum=checksum("sha1")), dest)

    assert result.path.read_bytes() == PAYLOAD
    assert not (dest / "data.bin.part").exists()
    assert Handler.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-")]


def test_server_ignoring_range_restarts_from_zero(serve, dest):
    class IgnoresRange(Recorder):
        def requested_range(self, size):
            return None

    dest.mkdir()
    # Garbage in the .part: appending the 200 body to it would fail verification.
    (dest / "data.bin.part").write_bytes(b"x" * CUT)
    url = serve(IgnoresRange).url + "data.bin"
    result = fetch(remote(url, checksum=checksum("sha256")), dest)

    assert result.path.read_bytes() == PAYLOAD
    assert IgnoresRange.requests == [("/data.bin", f"bytes={CUT}-")]


# --- retries and mirrors -----------------------------------------------------------------------


def test_server_errors_are_retried_with_exponential_backoff(serve, dest, sleeps):
    class FailsTwice(Recorder):
        def respond(self):
            if len(self.requests) <= 2:
                self.send_error(503)
            else:
                super().respond()

    url = serve(FailsTwice).url + "data.bin"
    result = fetch(remote(url, checksum=checksum("sha256")), dest, retries=3, backoff=0.25)

    assert result.path.read_bytes() == PAYLOAD
    assert len(FailsTwice.requests) == 3
    assert sleeps == [0.25, 0.5]


@pytest.mark.parametrize(
    ("retry_after", "expected_delay"), [("7", 7.0), ("100000", MAX_RETRY_DELAY_S)]
)
def test_retry_after_is_respected_and_capped(serve, dest, sleeps, retry_after, expected_delay):
    class TooManyRequests(Recorder):
        def respond(self):
            if len(self.requests) == 1:
                self.send_response(429)
                self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                super().respond()

    url = serve(TooManyRequests).url + "data.bin"
    fetch(remote(url, checksum=checksum("sha256")), dest, backoff=0.01)
    assert sleeps == [expected_delay]


def test_timeout_is_retried(serve, dest):
    class SlowFirstResponse(Recorder):
        def respond(self):
            if len(self.requests) == 1:
                time.sleep(0.5)  # the client gave up after 0.1 s
                self.close_connection = True
            else:
                super().respond()

    url = serve(SlowFirstResponse).url + "data.bin"
    result = fetch(remote(url, checksum=checksum("sha256")), dest, timeout=0.1, backoff=0)
    assert result.path.read_bytes() == PAYLOAD
    assert len(SlowFirstResponse.requests) == 2


@pytest.mark.parametrize("status", [403, 404, 410])
def test_permanent_error_moves_to_next_mirror_without_retrying(serve, dest, sleeps, status):
    class PrimaryRefuses(Recorder):
        def respond(self):
            if self.path.startswith("/primary/"):
                self.send_error(status)
            else:
                super().respond()

    server = serve(PrimaryRefuses)
    primary, mirror = server.url + "primary/data.bin", server.url + "data.bin"
    result = fetch(remote(primary, mirror, checksum=checksum("sha256")), dest, backoff=10)

    assert result.url == mirror
    assert result.path.read_bytes() == PAYLOAD
    assert PrimaryRefuses.requests == [("/primary/data.bin", None), ("/data.bin", None)]
    assert sleeps == []


def test_every_url_failing_names_each_one(serve, dest, sleeps):
    class Broken(Recorder):
        def respond(self):
            self.send_error(404 if self.path.startswith("/gone/") else 500)

    server = serve(Broken)
    urls = [server.url + "gone/data.bin", server.url + "data.bin", closed_port_url()]
    with pytest.raises(DownloadError) as excinfo:
        fetch(remote(*urls, checksum=checksum("sha256")), dest, retries=2, backoff=0)

    message = str(excinfo.value)
    assert "data.bin" in message
    for url in urls:
        assert url in message
    assert "HTTP 404" in message and "HTTP 500" in message and "Connection" in message
    # 404: tried once; 500 and connection refused: tried 1 + 2 retries each.
    assert [path for path, _ in Broken.requests] == ["/gone/data.bin"] + ["/data.bin"] * 3
    assert len(sleeps) == 4
    assert not (dest / "data.bin").exists()


def test_requests_carry_a_user_agent(serve, dest):
    class RecordsAgent(Recorder):
        agents: ClassVar[list[str | None]] = []

        def respond(self):
            self.agents.append(self.headers.get("User-Agent"))
            super().respond()

    fetch(remote(serve(RecordsAgent).url + "data.bin"), dest)
    assert RecordsAgent.agents == [download.USER_AGENT]
    assert "Python-urllib" not in download.USER_AGENT  # the agent some hosts refuse


def test_no_url_at_all(dest):
    with pytest.raises(DownloadError, match="by hand"):
        fetch(remote(), dest)


# --- idempotence -------------------------------------------------------------------------------


def test_second_fetch_makes_no_request(serve, dest):
    class Handler(Recorder):
        pass

    spec = remote(serve(Handler).url + "data.bin", checksum=checksum("sha256"))
    first = fetch(spec, dest)
    second = fetch(spec, dest)

    assert len(Handler.requests) == 1
    assert (second.reused, second.url, second.path) == (True, None, first.path)
    assert (second.sha256, second.bytes) == (first.sha256, first.bytes)


def test_file_modified_after_verification_is_fetched_again(serve, dest):
    class Handler(Recorder):
        pass

    spec = remote(serve(Handler).url + "data.bin", checksum=checksum("sha256"))
    path = fetch(spec, dest).path
    mtime_ns = path.stat().st_mtime_ns
    path.write_bytes(b"y" * len(PAYLOAD))  # same size, other content
    os.utime(path, ns=(mtime_ns + 10**9, mtime_ns + 10**9))

    result = fetch(spec, dest)
    assert result.reused is False
    assert result.path.read_bytes() == PAYLOAD
    assert len(Handler.requests) == 2


def test_touched_file_is_reverified_not_fetched(serve, dest):
    class Handler(Recorder):
        pass

    spec = remote(serve(Handler).url + "data.bin", checksum=checksum("sha256"))
    path = fetch(spec, dest).path
    new_mtime = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(new_mtime, new_mtime))

    result = fetch(spec, dest)
    assert result.reused is True
    assert len(Handler.requests) == 1
    assert json.loads((dest / ".data.bin.verified.json").read_text())["mtime_ns"] == new_mtime


def test_file_placed_by_hand_is_verified_and_reused(dest):
    dest.mkdir()
    (dest / "data.bin").write_bytes(PAYLOAD)
    # The URL would refuse connections: reuse must not touch the network.
    result = fetch(remote(closed_port_url(), checksum=checksum("sha256")), dest, retries=0)
    assert result.reused is True
    assert (dest / ".data.bin.verified.json").exists()


def test_changed_published_checksum_triggers_reverification(serve, dest):
    class Handler(Recorder):
        pass

    url = serve(Handler).url + "data.bin"
    fetch(remote(url, checksum=checksum("sha256")), dest)
    # The spec now publishes md5 instead: the sidecar no longer vouches for it, the file does.
    result = fetch(remote(url, checksum=checksum("md5")), dest)
    assert result.reused is True
    assert len(Handler.requests) == 1
    assert json.loads((dest / ".data.bin.verified.json").read_text())["checksum"] == checksum("md5")


def test_concurrent_fetches_download_once(serve, dest):
    class Slow(Recorder):
        def respond(self):
            time.sleep(0.2)  # keep the first download running while the second one starts
            super().respond()

    spec = remote(serve(Slow).url + "data.bin", checksum=checksum("sha256"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch(spec, dest))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(Slow.requests) == 1
    assert sorted(r.reused for r in results) == [False, True]
    assert (dest / "data.bin").read_bytes() == PAYLOAD
    assert not (dest / ".data.bin.lock").exists()


# --- progress, Google Drive, checksums ---------------------------------------------------------


def test_progress_reports_bytes_and_ends_complete(serve, dest):
    class Handler(Recorder):
        pass

    calls: list[tuple[int, int | None]] = []
    url = serve(Handler).url + "data.bin"
    fetch(remote(url, checksum=checksum("sha256")), dest, progress=lambda *a: calls.append(a))

    assert calls[0] == (0, len(PAYLOAD))
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_gdrive_url_translation():
    assert gdrive_download_url("1AbC-_x") == (
        "https://drive.usercontent.google.com/download?id=1AbC-_x&export=download&confirm=t"
    )


def test_gdrive_html_page_is_refused_with_instructions(serve, dest, monkeypatch):
    class QuotaPage(Recorder):
        def respond(self):
            body = b"<html><body>Too many users have viewed or downloaded this file</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = serve(QuotaPage)
    monkeypatch.setattr(download, "GDRIVE_URL_TEMPLATE", server.url + "uc?id={file_id}")
    with pytest.raises(DownloadError) as excinfo:
        fetch(remote("gdrive://1AbCdEf", checksum=checksum("sha256")), dest, backoff=0)

    message = str(excinfo.value)
    assert "Google Drive" in message and "archive_dir" in message and "1AbCdEf" in message
    assert QuotaPage.requests == [("/uc?id=1AbCdEf", None)]  # refusal is final for that URL
    assert not (dest / "data.bin").exists() and not (dest / "data.bin.part").exists()


def test_gdrive_file_is_downloaded(serve, dest, monkeypatch):
    class Handler(Recorder):
        pass

    server = serve(Handler)
    monkeypatch.setattr(download, "GDRIVE_URL_TEMPLATE", server.url + "{file_id}")
    result = fetch(remote("gdrive://data.bin", checksum=checksum("sha256")), dest)
    assert result.path.read_bytes() == PAYLOAD
    assert result.url == "gdrive://data.bin"


def test_file_digest_and_verify_checksum(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(PAYLOAD)
    assert file_digest(path) == hashlib.sha256(PAYLOAD).hexdigest()
    assert file_digest(path, "md5") == hashlib.md5(PAYLOAD).hexdigest()
    verify_checksum(path, checksum("sha1"))
    verify_checksum(path, checksum("md5").upper().replace("MD5", "md5"))  # hex case is free

    with pytest.raises(ChecksumMismatch) as excinfo:
        verify_checksum(path, checksum("sha1", b"other"))
    assert str(path) in str(excinfo.value)
    assert checksum("sha1") in str(excinfo.value)


@pytest.mark.parametrize(
    "spec", ["crc32:1234abcd", "sha256", "md5:xyz", "sha1:" + "a" * 39, "sha256:" + "g" * 64]
)
def test_malformed_checksum_is_refused_before_any_request(serve, dest, tmp_path, spec):
    class Handler(Recorder):
        pass

    path = tmp_path / "data.bin"
    path.write_bytes(PAYLOAD)
    with pytest.raises(ValueError, match="malformed checksum"):
        verify_checksum(path, spec)
    with pytest.raises(ValueError, match="malformed checksum"):
        fetch(remote(serve(Handler).url + "data.bin", checksum=spec), dest)
    assert Handler.requests == []


@pytest.mark.parametrize("filename", ["../data.bin", "sub/data.bin", "", ".."])
def test_filename_must_be_a_plain_name(dest, filename):
    with pytest.raises(ValueError, match="plain file name"):
        fetch(RemoteFile(filename, ("http://127.0.0.1:9/x",)), dest)


# --- content sniff and verification levels ------------------------------------------------------

from instructcv_core.data.download import content_problem, verification_level  # noqa: E402


def test_empty_file_without_checksum_is_refused_and_not_recorded(mirror, dest):
    (mirror / "data.bin").write_bytes(b"")
    with pytest.raises(DownloadError, match="data.bin: the copy from .* is unusable: empty file"):
        fetch(remote((mirror / "data.bin").as_uri()), dest)
    assert list(dest.iterdir()) == []


def test_html_page_instead_of_a_zip_is_refused(mirror, dest):
    (mirror / "data.zip").write_bytes(b"<!DOCTYPE html><html>quota exceeded</html>")
    spec = RemoteFile("data.zip", ((mirror / "data.zip").as_uri(),), size=42)
    with pytest.raises(DownloadError, match=r"not a zip archive \(starts with b'<!DOCTYP'"):
        fetch(spec, dest)
    assert list(dest.iterdir()) == []


def test_unpinned_file_is_recorded_as_content_checked_not_verified(mirror, dest, caplog):
    url = (mirror / "data.bin").as_uri()
    with caplog.at_level(logging.WARNING, logger="instructcv_core.data.download"):
        result = fetch(remote(url), dest)
    assert result.verification == "content"
    assert "NOT verified: no size either" in caplog.text
    assert json.loads((dest / ".data.bin.verified.json").read_text())["verification"] == "content"
    assert fetch(remote(url), dest).reused  # the record is reused at the same level


def test_verification_levels():
    assert verification_level(remote("u", checksum=checksum("md5"))) == "checksum"
    assert verification_level(remote("u", size=3)) == "size+content"
    assert verification_level(remote("u")) == "content"


def test_reused_file_is_rechecked_when_the_spec_pins_more(mirror, dest):
    url = (mirror / "data.bin").as_uri()
    fetch(remote(url), dest)  # recorded at level "content"
    with pytest.raises(DownloadError, match=f"expected {len(PAYLOAD) + 1} bytes, got {len(PAYLOAD)}"):
        fetch(remote(url, size=len(PAYLOAD) + 1), dest)  # now a size is pinned: checked again


@pytest.mark.parametrize(
    "name, head, problem",
    [
        ("a.zip", b"PK\x03\x04rest", None),
        ("a.zip", b"PK\x05\x06" + b"\0" * 18, None),  # an empty zip is still a zip (extraction refuses it)
        ("a.tar.gz", b"\x1f\x8b\x08rest", None),
        ("a.tar.gz", b"x" * 257 + b"ustar\x0000", None),  # Pets' .tar.gz are plain tars
        ("a.tgz", b"BZh91AY", None),
        ("a.tar", b"x" * 600, "not a tar archive"),
        ("a.mat", b"MATLAB 5.0 MAT-file", None),
        ("a.mat", b"\0" * 512 + b"\x89HDF\r\n\x1a\n", None),
        ("a.mat", b"<html>", "not a MATLAB file"),
        ("list.txt", b"a b\n", None),
        ("list.txt", b"a\0b", "binary data where text is expected"),
        ("list.txt", b"\xff\xfe\xfd" + b"x" * 10, "not UTF-8 text"),
        ("data.bin", b"\0", None),
    ],
)
def test_content_sniff(tmp_path, name, head, problem):
    path = tmp_path / name
    path.write_bytes(head)
    result = content_problem(path, name)
    assert (result is None) if problem is None else (problem in result)
