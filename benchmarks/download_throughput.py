"""Download throughput over loopback: `download.fetch` (resume bookkeeping + checksum) vs a bare copy.

The real cost of a download is the network; this measures our overhead on top of it: reading the
socket, writing the .part, hashing for the checksum, the verification sidecar and the rename.

    python benchmarks/download_throughput.py [--mib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from instructcv_core.data.datasets.base import RemoteFile
from instructcv_core.data.download import fetch
from instructcv_core.data.mirror_server import serve_directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the test file in MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        served = tmp / "served"
        served.mkdir()
        payload = served / "archive.bin"
        with open(payload, "wb") as fh:
            for _ in range(args.mib):
                fh.write(os.urandom(1 << 20))
        sha256 = hashlib.sha256(payload.read_bytes()).hexdigest()
        size = payload.stat().st_size
        with serve_directory(served) as server:
            url = server.url + "archive.bin"

            start = time.perf_counter()
            with urllib.request.urlopen(url) as resp, open(tmp / "bare.bin", "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
            bare = time.perf_counter() - start

            start = time.perf_counter()
            fetch(RemoteFile("archive.bin", (url,), f"sha256:{sha256}", size), tmp / "fetched", show_bar=False)
            ours = time.perf_counter() - start

            start = time.perf_counter()
            again = fetch(RemoteFile("archive.bin", (url,), f"sha256:{sha256}", size), tmp / "fetched", show_bar=False)
            reuse = time.perf_counter() - start
            assert again.reused

        mib = size / 2**20
        print(f"file: {mib:.0f} MiB over loopback HTTP")
        print(f"bare urllib copy       : {bare:6.2f} s  {mib / bare:8.1f} MiB/s")
        print(f"fetch (verify sha256)  : {ours:6.2f} s  {mib / ours:8.1f} MiB/s  ratio to bare {bare / ours:.2f}")
        print(f"fetch again (verified) : {reuse * 1000:6.1f} ms (no network, no re-hash)")


if __name__ == "__main__":
    main()
