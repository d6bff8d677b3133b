"""Shared fixtures: a real MLflow tracking server on loopback, and test isolation from the user's data."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _isolated_dagster_home(tmp_path_factory, monkeypatch):
    """Every test gets a throwaway DAGSTER_HOME with the project's dagster.yaml."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` process on a free loopback port; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(root / "server.log", "w")
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not become healthy within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread: tiny models gain nothing from a second one, and on a busy 2-core
    machine OpenMP's barrier waits make two threads several times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_RES = 32


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny InstructPix2Pix pipeline folder at 32 px whose image channels of conv_in are random
    (so the input image matters), saved in the stock diffusers layout."""
    import torch

    from instructcv_core.model.config import TinyModelConfig
    from instructcv_core.model.conv_in import widen_conv_in
    from instructcv_core.model.loading import load_base
    from instructcv_core.model.tiny_base import build_tiny_base
    from instructcv_core.training.export import build_pipeline

    root = tmp_path_factory.mktemp("tiny_pipeline")
    config = TinyModelConfig(image_size=TINY_RES, vae_block_out_channels=(8, 16, 16), unet_block_out_channels=(16, 32),
                             text_encoder="minilm", prediction_type="epsilon", seed=0)
    base = load_base(str(build_tiny_base(config, root / "base")))
    unet = widen_conv_in(base.unet, 8)
    with torch.no_grad():
        unet.conv_in.weight[:, 4:].normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    out = root / "pipeline"
    build_pipeline(unet, base.vae, base.text_encoder, base.tokenizer, base.noise_scheduler).save_pretrained(out)
    return out
