"""Metric logging from inside the training process into an MLflow run the caller owns (rank 0)."""

from __future__ import annotations

import time
from pathlib import Path


class MlflowMetrics:
    """Buffered metric logging into an existing run (does not start, end or change the run's status)."""

    def __init__(self, tracking_uri: str | None, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.buffer = MlflowClient(tracking_uri=tracking_uri), run_id, []

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer += [Metric(key, float(value), now, step) for key, value in metrics.items()]

    def flush(self) -> None:
        for start in range(0, len(self.buffer), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=self.buffer[start : start + 1000])
        self.buffer = []

    def artifact(self, path: Path, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)
