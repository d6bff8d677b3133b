"""Download published dataset files: resumable, verified against their checksum, safe to re-run.

`fetch` is the entry point. Its contract:

- ``dest_dir / remote.filename`` exists only once its content has been verified, at the strongest
  level the spec allows (`verification_level`): ``"checksum"`` (the published digest, and size
  where pinned), ``"size+content"`` (the pinned size, and a content sniff), ``"structure+content"``
  (the published structure: member, line or array counts, `instructcv_core.data.structure`), or
  ``"content"`` (no pin at all: only the sniff; logged as a warning with the sha256 to pin, and
  never called verified by the size or digest). The sniff (`content_problem`) always runs: the file must be
  non-empty and start like what its name says (zip, tar in any compression, MATLAB, text).
- Bytes arrive in ``<filename>.part`` first. An interrupted download (network error, killed process)
  resumes from the bytes already there with an HTTP ``Range`` request.
- URLs are tried in order (primary, then mirrors); transient failures are retried with exponential
  back-off, permanent ones (404, 403, 410, ...) move straight on to the next mirror.
- Re-running is free: a sidecar ``.<filename>.verified.json`` records the verification, and a file
  whose size and mtime still match it is returned without reading it again or touching the network.

URL schemes: ``http://``, ``https://``, ``file://`` (a local copy, same resume/verify path) and
``gdrive://<file-id>`` (Google Drive's direct-download endpoint).

Only the standard library does the networking (urllib), so that a download needs nothing beyond
what the project already installs. File locking uses ``fcntl``, so this module is POSIX-only.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.error import HTTPError, URLError

from tqdm import tqdm

from instructcv_core.data.records import atomic_write_text

if TYPE_CHECKING:  # annotations only: dataset modules import this one, so avoid a cycle
    from instructcv_core.data.datasets.base import RemoteFile

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # bytes read (and hashed) at a time: 1 MiB
PROGRESS_INTERVAL_S = 0.5  # least time between two calls of the progress callback
MAX_RETRY_DELAY_S = 120.0  # cap on a back-off delay, Retry-After included
# Some academic hosts refuse urllib's default "Python-urllib/3.x" agent.
USER_AGENT = "instructcv-dataset-downloader/0.1 (Python urllib)"
# Google Drive's direct-download endpoint; confirm=t skips the "cannot scan for viruses" page.
GDRIVE_URL_TEMPLATE = (
    "https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"
)
_DIGEST_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}  # hex characters per supported algorithm

# Indirection so that tests can observe back-off delays without waiting them out.
_sleep = time.sleep


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message names the file, the URLs tried and why."""


class ChecksumMismatch(DownloadError):
    """A file's digest differs from the published one.

    ``expected`` and ``actual`` are ``"<algo>:<hex>"``; ``source`` is the URL (or local path) the
    bytes came from.
    """

    def __init__(self, filename: str, source: str, expected: str, actual: str) -> None:
        self.filename, self.source, self.expected, self.actual = filename, source, expected, actual
        super().__init__(
            f"{filename}: checksum mismatch for the copy from {source}: expected {expected}, "
            f"got {actual}. If the host has published a new version, update the checksum in the "
            "dataset spec; otherwise download it again."
        )


@dataclass(frozen=True)
class FetchResult:
    """What `fetch` delivered.

    ``url`` is the URL the bytes came from, or None when an already verified file was reused;
    ``sha256`` is the hex digest of the file (whatever algorithm the published checksum uses);
    ``bytes`` is its size; ``verification`` what it was checked against (`verification_level`).
    """

    path: Path
    url: str | None
    sha256: str
    bytes: int
    reused: bool
    verification: str = "checksum"


def verification_level(remote: RemoteFile) -> str:
    """``"checksum"``, ``"size+content"``, ``"structure+content"`` or ``"content"``: the strongest check ``remote`` pins."""
    if remote.checksum is not None:
        return "checksum"
    if remote.size is not None:
        return "size+content"
    return "structure+content" if remote.structure else "content"


_TEXT_SUFFIXES = (".txt", ".json", ".csv")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def content_problem(path: Path, filename: str) -> str | None:
    """Why ``path`` cannot be the file ``filename`` names, judged by its first bytes; None if it can.

    Empty is always wrong. By suffix: ``.zip`` starts with a zip signature; a tar (plain or
    compressed) with gzip/bzip2/xz magic or ``ustar`` at byte 257; ``.mat`` with MATLAB's text
    header or the HDF5 signature (v7.3); ``.txt``/``.json``/``.csv`` is UTF-8 without NUL bytes.
    Other names get the non-empty check only.
    """
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head:
        return "empty file"
    name = filename.lower()
    if name.endswith(".zip") and not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return f"not a zip archive (starts with {head[:8]!r}; an HTML error page?)"
    if name.endswith(_TAR_SUFFIXES) and not (head.startswith(_COMPRESSED_MAGIC) or head[257:262] == b"ustar"):
        return f"not a tar archive, plain or compressed (starts with {head[:8]!r}; an HTML error page?)"
    if name.endswith(".mat") and not (head.startswith(b"MATLAB") or _HDF5_MAGIC in (head[:8], head[512:520])):
        return f"not a MATLAB file (starts with {head[:8]!r})"
    if name.endswith(_TEXT_SUFFIXES):
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 3:  # not just a character cut by the 64 KiB window
                return "not UTF-8 text"
            text = ""
        if "\0" in text:
            return "binary data where text is expected"
    return None


def file_digest(path: Path, algo: str = "sha256") -> str:
    """Hex digest of a file with any `hashlib` algorithm, read in 1 MiB chunks."""
    return _digests(Path(path), [algo])[algo]


def verify_checksum(path: Path, checksum: str) -> None:
    """Raise `ChecksumMismatch` unless ``path`` has the digest ``checksum`` (``"<algo>:<hex>"``).

    ``algo`` is md5, sha1 or sha256; a malformed ``checksum`` raises ValueError.
    """
    path = Path(path)
    algo, expected = parse_checksum(checksum)
    actual = file_digest(path, algo)
    if actual != expected:
        raise ChecksumMismatch(path.name, str(path), f"{algo}:{expected}", f"{algo}:{actual}")


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"<algo>:<hex>"`` into (algo, lower-case hex); ValueError unless well formed."""
    algo, _, hexdigest = checksum.partition(":")
    algo, hexdigest = algo.strip().lower(), hexdigest.strip().lower()
    length = _DIGEST_LENGTHS.get(algo)
    if length is None or not re.fullmatch(f"[0-9a-f]{{{length}}}", hexdigest):
        raise ValueError(
            f"malformed checksum {checksum!r}: expected 'md5:<32 hex digits>', "
            "'sha1:<40 hex digits>' or 'sha256:<64 hex digits>'"
        )
    return algo, hexdigest


def gdrive_download_url(file_id: str) -> str:
    """The direct-download URL of a Google Drive file, from its id (as in ``gdrive://<id>``)."""
    return GDRIVE_URL_TEMPLATE.format(file_id=urllib.parse.quote(file_id, safe=""))


def fetch(
    remote: RemoteFile,
    dest_dir: Path,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
    show_bar: bool = True,
) -> FetchResult:
    """Make ``dest_dir / remote.filename`` a verified copy of ``remote`` and return it.

    ``retries``: retries per URL after its first attempt, for transient failures (connection
    errors, timeouts, connections cut mid-body, HTTP 5xx, 408 and 429). The n-th retry waits
    ``backoff * 2**(n-1)`` seconds, or what the server's ``Retry-After`` asks, both capped at
    `MAX_RETRY_DELAY_S`. Each retry resumes from the bytes already downloaded.
    ``timeout``: seconds any single network operation (connect, one read) may block.
    ``progress(done_bytes, total_bytes_or_None)``: called at most every 0.5 s during the download
    and once at the end. ``show_bar``: also draw a tqdm bar on stderr (it stays off without a TTY).

    Raises `ChecksumMismatch` (or `DownloadError` for a size mismatch) when the downloaded bytes are
    wrong, after deleting them; `DownloadError` naming every URL tried when none delivered the file;
    ValueError for a malformed ``remote.checksum``, a ``filename`` that is not a plain name or a
    negative ``retries``.
    """
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    if remote.checksum is not None:
        parse_checksum(remote.checksum)  # a typo in a spec must fail before hours of download
    paths = _Paths.for_file(Path(dest_dir), remote.filename)
    paths.final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(paths.lock):
        result = _reuse_verified(remote, paths)
        if result is not None:
            if progress is not None:
                progress(result.bytes, result.bytes)
            return result
        url = _download(
            remote,
            paths,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            progress=progress,
            show_bar=show_bar,
        )
        return _install(remote, paths, url)


# --- files in dest_dir -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Paths:
    """Where `fetch` keeps one file: the final path and its hidden companions."""

    final: Path
    part: Path  # bytes downloaded so far
    sidecar: Path  # the verification record
    lock: Path

    @classmethod
    def for_file(cls, dest_dir: Path, filename: str) -> _Paths:
        if filename in ("", ".", "..") or Path(filename).name != filename or "\\" in filename:
            raise ValueError(
                f"RemoteFile.filename {filename!r} must be a plain file name, without folders"
            )
        return cls(
            final=dest_dir / filename,
            part=dest_dir / f"{filename}.part",
            sidecar=dest_dir / f".{filename}.verified.json",
            lock=dest_dir / f".{filename}.lock",
        )


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created for the purpose, removed on release).

    The file is removed while still locked, so a process that was waiting on it ends up holding a
    lock on a deleted inode; it notices that ``path`` no longer names that inode and starts over.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("%s: held by another process fetching the same file; waiting", path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass  # removed by its previous holder between our open and our stat: start over
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _reuse_verified(remote: RemoteFile, paths: _Paths) -> FetchResult | None:
    """Return the existing final file if it is (still) the right one; delete it if it is not."""
    if not paths.final.is_file():
        return None
    stat = paths.final.stat()
    record = _read_sidecar(paths.sidecar)
    if (
        record is not None
        and record.get("checksum") == remote.checksum
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
        and remote.size in (None, stat.st_size)
        and record.get("verification") == verification_level(remote)
        and isinstance(record.get("sha256"), str)
    ):
        return FetchResult(paths.final, None, record["sha256"], stat.st_size, reused=True,
                           verification=record["verification"])
    # Placed by hand, or changed since it was verified: check its content before trusting it.
    try:
        sha256 = _verify(paths.final, remote, source=str(paths.final))
    except DownloadError as exc:
        logger.warning("%s failed verification, downloading it again: %s", paths.final, exc)
        paths.final.unlink()
        paths.sidecar.unlink(missing_ok=True)
        return None
    size = _write_sidecar(remote, paths, sha256)
    return FetchResult(paths.final, None, sha256, size, reused=True, verification=verification_level(remote))


def _read_sidecar(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_sidecar(remote: RemoteFile, paths: _Paths, sha256: str) -> int:
    """Record that ``paths.final`` was verified as it is now; return its size in bytes."""
    stat = paths.final.stat()
    record = {
        "checksum": remote.checksum,
        "verification": verification_level(remote),
        "sha256": sha256,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    atomic_write_text(paths.sidecar, json.dumps(record, indent=2) + "\n")
    return stat.st_size


def _verify(path: Path, remote: RemoteFile, *, source: str) -> str:
    """Check ``path`` against the published size and checksum; return its sha256 (hex).

    Size and content sniff first: they cost a ``stat`` and one small read where the digest costs
    reading the whole file.
    """
    size = path.stat().st_size
    problem = content_problem(path, remote.filename)
    if problem is not None:
        raise DownloadError(
            f"{remote.filename}: the copy from {source} is unusable: {problem}. Delete it and download "
            "it again, or check the URL in the dataset spec."
        )
    if remote.size is not None and size != remote.size:
        raise DownloadError(
            f"{remote.filename}: size mismatch for the copy from {source}: expected "
            f"{remote.size} bytes, got {size}. If the host has published a new version, update "
            "the size in the dataset spec; otherwise download it again."
        )
    if remote.structure:
        from instructcv_core.data.structure import structure_problem

        problem = structure_problem(path, remote.structure)
        if problem is not None:
            raise DownloadError(
                f"{remote.filename}: the copy from {source} does not have its published structure: {problem}. "
                "A truncated or partial download? Delete it and download it again."
            )
    if remote.checksum is None:
        sha256 = file_digest(path)
        pinned = {
            "size+content": "checked against its pinned size and content type only",
            "structure+content": "checked against its published structure and content type only",
        }.get(verification_level(remote), "NOT verified: no size either, only its content type was checked")
        logger.warning(
            "%s: no published checksum (%s); pin this sha256 in the dataset spec: %s",
            remote.filename,
            pinned,
            sha256,
        )
        return sha256
    algo, expected = parse_checksum(remote.checksum)
    digests = _digests(path, {algo, "sha256"})  # one pass over the file for both
    if digests[algo] != expected:
        actual = f"{algo}:{digests[algo]}"
        raise ChecksumMismatch(remote.filename, source, f"{algo}:{expected}", actual)
    return digests["sha256"]


def _digests(path: Path, algos: Iterable[str]) -> dict[str, str]:
    # usedforsecurity=False: md5/sha1 here detect corruption, and FIPS builds refuse them otherwise.
    hashes = {algo: hashlib.new(algo, usedforsecurity=False) for algo in algos}
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_SIZE):
            for h in hashes.values():
                h.update(chunk)
    return {algo: h.hexdigest() for algo, h in hashes.items()}


def _install(remote: RemoteFile, paths: _Paths, url: str) -> FetchResult:
    """Verify the completed ``.part`` and rename it into place, or delete everything and raise."""
    try:
        sha256 = _verify(paths.part, remote, source=url)
    except DownloadError:
        for path in (paths.part, paths.final, paths.sidecar):
            path.unlink(missing_ok=True)
        raise
    os.replace(paths.part, paths.final)
    size = _write_sidecar(remote, paths, sha256)
    level = verification_level(remote)
    logger.info("%s: downloaded from %s (%d bytes; verification: %s)", remote.filename, url, size, level)
    return FetchResult(paths.final, url, sha256, size, reused=False, verification=level)


# --- the network -------------------------------------------------------------------------------


class _RetryableError(Exception):
    """A failure worth retrying on the same URL; ``retry_after`` in seconds if the server said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _UrlFailedError(Exception):
    """This URL will not deliver the file (404, Google Drive refusal, ...): try the next one."""


@dataclass
class _Body:
    """An open response: its bytes are the file from byte ``start`` on.

    ``length`` is the number of bytes the response promised (None when it did not say);
    ``total`` the size of the whole file where known.
    """

    stream: BinaryIO
    start: int
    length: int | None
    total: int | None
    content_type: str


def _download(
    remote: RemoteFile,
    paths: _Paths,
    *,
    retries: int,
    backoff: float,
    timeout: float,
    progress: Callable[[int, int | None], None] | None,
    show_bar: bool,
) -> str:
    """Fill ``paths.part`` from the first URL that works; return that URL."""
    if not remote.urls:
        raise DownloadError(
            f"{remote.filename}: no URL to download it from; put the file at {paths.final} by hand"
        )
    failures = []
    with _ByteProgress(remote.filename, progress, show_bar) as meter:
        for url in remote.urls:
            try:
                _download_from(
                    url, paths.part, retries=retries, backoff=backoff, timeout=timeout, meter=meter
                )
            except _UrlFailedError as exc:
                logger.warning("%s: %s failed: %s", remote.filename, url, exc)
                failures.append(f"{url}: {exc}")
                continue
            meter.finish(paths.part.stat().st_size)
            return url
    tried = "".join(f"\n  - {failure}" for failure in failures)
    raise DownloadError(
        f"{remote.filename}: could not download it from any of its URLs:{tried}\n"
        f"Check the network (and proxy settings), or download the file by hand and put it at "
        f"{paths.final}."
    )


def _download_from(
    url: str, part: Path, *, retries: int, backoff: float, timeout: float, meter: _ByteProgress
) -> None:
    """Complete ``part`` from one URL, retrying transient failures; else `_UrlFailedError`."""
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout=timeout, meter=meter)
            return
        except _RetryableError as exc:
            if attempt == retries:
                raise _UrlFailedError(f"{exc} (gave up after {attempt + 1} attempts)") from exc
            delay = exc.retry_after if exc.retry_after is not None else backoff * 2**attempt
            delay = min(delay, MAX_RETRY_DELAY_S)
            logger.warning(
                "%s: %s; retry %d of %d in %.1f s", url, exc, attempt + 1, retries, delay
            )
            _sleep(delay)


def _transfer(url: str, part: Path, *, timeout: float, meter: _ByteProgress) -> None:
    """One attempt: append what ``url`` still has to give to ``part``."""
    offset = part.stat().st_size if part.exists() else 0
    body = _open(url, offset, timeout)
    if body is None:  # the server says there is nothing past `offset`: .part holds it all
        return
    with body.stream:
        if url.startswith("gdrive://") and body.content_type == "text/html":
            raise _UrlFailedError(_gdrive_refusal(url))
        if body.start not in (0, offset):
            part.unlink(missing_ok=True)
            raise _RetryableError(
                f"server resumed at byte {body.start} instead of {offset}; restarting from zero"
            )
        # A 200 answer to a Range request means the server ignores Range: start from zero.
        mode = "ab" if body.start else "wb"
        meter.restart(body.start, body.total)
        received = 0
        try:
            with part.open(mode) as out:
                while chunk := _read_chunk(body.stream):
                    out.write(chunk)
                    received += len(chunk)
                    meter.advance(len(chunk))
        except OSError as exc:  # network errors were turned into _RetryableError: this is the disk
            raise DownloadError(f"{part.name}: cannot write {part}: {exc}") from exc
    if body.length is not None and received < body.length:
        raise _RetryableError(
            f"connection closed after {body.start + received} of {body.start + body.length} bytes"
        )


def _open(url: str, offset: int, timeout: float) -> _Body | None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "file":
        return _open_file(url, offset)
    if scheme == "gdrive":
        return _open_http(gdrive_download_url(_gdrive_id(url)), offset, timeout)
    if scheme in ("http", "https"):
        return _open_http(url, offset, timeout)
    raise _UrlFailedError(f"unsupported URL scheme {scheme!r} (use http, https, file or gdrive)")


def _open_http(url: str, offset: int, timeout: float) -> _Body | None:
    """GET ``url`` from byte ``offset`` on; None when the server says nothing is left (416)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None
        message = f"HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code in (408, 429):
            retry_after = _parse_retry_after(exc.headers.get("Retry-After"))
            raise _RetryableError(message, retry_after) from exc
        raise _UrlFailedError(message) from exc  # 404, 403, 410, ...: asking again will not help
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise _RetryableError(_describe(exc)) from exc
    length = _parse_int(response.headers.get("Content-Length"))
    if response.status != 206:
        return _Body(response, 0, length, length, response.headers.get_content_type())
    start, total = _parse_content_range(response.headers.get("Content-Range"))
    if start is None:  # unusable answer: make `_transfer` restart from zero
        start = -1
    if total is None and length is not None and start >= 0:
        total = start + length
    return _Body(response, start, length, total, response.headers.get_content_type())


def _open_file(url: str, offset: int) -> _Body | None:
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise _UrlFailedError(f"cannot read {path}: {exc.strerror}") from exc
    size = os.fstat(stream.fileno()).st_size
    if offset and offset >= size:  # as an HTTP server answers 416
        stream.close()
        return None
    stream.seek(offset)
    return _Body(stream, offset, size - offset, size, "application/octet-stream")


def _read_chunk(stream: BinaryIO) -> bytes:
    try:
        return stream.read(CHUNK_SIZE)
    except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
        raise _RetryableError(f"connection lost mid-download ({_describe(exc)})") from exc


def _gdrive_id(url: str) -> str:
    # Not urlsplit(url).netloc: that is a host name to urllib, and ids are case-sensitive.
    return url.removeprefix("gdrive://").strip("/")


def _gdrive_refusal(url: str) -> str:
    file_id = _gdrive_id(url)
    return (
        "Google Drive answered with an HTML page instead of the file: it refused the download "
        "(its daily quota for this file is used up, or it asks for a confirmation a script "
        f"cannot give). Download it by hand from https://drive.google.com/uc?id={file_id} into "
        "a folder and point the dataset's `archive_dir` config at that folder."
    )


def _parse_int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of ``Content-Range: bytes a-b/total``; None for what is absent."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if match is None:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else None)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, URLError) else exc
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


class _ByteProgress:
    """Bytes in the ``.part`` file so far: a tqdm bar plus a throttled callback."""

    def __init__(
        self, name: str, callback: Callable[[int, int | None], None] | None, show_bar: bool
    ) -> None:
        self._callback = callback
        # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI).
        self._bar = tqdm(
            desc=name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=None if show_bar else True,
        )
        self.done = 0
        self.total: int | None = None
        self._last_report = float("-inf")

    def __enter__(self) -> _ByteProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()

    def restart(self, done: int, total: int | None) -> None:
        """A new response: ``done`` bytes are already in ``.part``, ``total`` expected in all."""
        self.done, self.total = done, total
        self._bar.reset(total=total)
        self._bar.update(done)
        self._report(force=False)

    def advance(self, n: int) -> None:
        self.done += n
        self._bar.update(n)
        self._report(force=False)

    def finish(self, size: int) -> None:
        """The download is complete at ``size`` bytes: report it whatever the throttle says."""
        self.done = self.total = size
        self._bar.total = size
        self._bar.refresh()
        self._report(force=True)

    def _report(self, *, force: bool) -> None:
        now = time.monotonic()
        if self._callback is not None and (force or now - self._last_report >= PROGRESS_INTERVAL_S):
            self._last_report = now
            self._callback(self.done, self.total)
