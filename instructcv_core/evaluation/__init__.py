"""Evaluating a checkpoint on the benchmarks, one responsibility per module.

* :mod:`.config`: :class:`~.config.EvalConfig`, what an evaluation asks and how it decodes answers;
* :mod:`.data`: a benchmark's test rows, raw records and evaluated images;
* :mod:`.planning`: the questions (queries) of both protocols, each output generated once;
* :mod:`.generation`: batched generation into a content-addressed output store;
* :mod:`.scoring`: post-processing and the protocols' metrics (the task's reducers), metric validity;
* :mod:`.reporting`: the files of a benchmark's results (metrics table, sample grid);
* :mod:`.run`: one benchmark end to end (plan, generate or reuse, score, write);
* :mod:`.comparison`: the paired trained-vs-untrained test;
* :mod:`.tables`: the paper's Tables 1–3 from the results;
* :mod:`.metrics` and :mod:`.protocols`: the metric maths (generic, `paper`, `standard`).

Task-specific knowledge (questions, reducers, previews, instruction-following probes, query counts)
lives in `instructcv_core.tasks`, which imports nothing of this package at load; the benchmark table
in `instructcv_core.benchmarks`. Units: mIoU, AP and accuracy in percent (as the
paper's tables); RMSE in metres; AbsRel and δ as fractions.
"""
