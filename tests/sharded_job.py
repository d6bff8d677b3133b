"""Jobs of the sharded evaluation under the multiprocess and the Dask executors (reconstructable, for
`dagster.execute_job` in tests/test_shards.py)."""

import dagster as dg
from dagster_dask import dask_executor

from assets.evaluate_shards import sharded_eval_asset
from assets.train import instructcv_fp_checkpoint
from pipelines.resources import InstructCVSettings


eval_shards_fp = sharded_eval_asset("fp", instructcv_fp_checkpoint, shards=2)


def _job(name: str, executor):
    return dg.Definitions(
        assets=[eval_shards_fp],
        jobs=[dg.define_asset_job(name, selection=[eval_shards_fp], executor_def=executor)],
        resources={"settings": InstructCVSettings()},
    ).resolve_job_def(name)


def multiprocess_job():
    return _job("sharded_multiprocess", dg.multiprocess_executor)


def dask_job():
    return _job("sharded_dask", dask_executor)
