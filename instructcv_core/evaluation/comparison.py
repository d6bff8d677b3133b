"""Is one model significantly better than another on the same images? (the trained-vs-untrained check)"""

from __future__ import annotations

import math

import numpy as np

#: The smallest difference in a headline metric that counts as one model beating another (percent
#: points for mIoU/AP/accuracy, metres for RMSE): below it a difference is immaterial however consistent.
MIN_EFFECT = {"miou": 1.0, "ap": 1.0, "map": 1.0, "accuracy": 1.0, "rmse": 0.05}


def paired_comparison(trained: dict[str, float], untrained: dict[str, float], higher_is_better: bool,
                      confidence: float = 0.95, min_effect: float = 0.0) -> dict:
    """Is ``untrained`` significantly better than ``trained`` on the images both were scored on?

    A one-sided paired t-test on per-image values: ``d_i = trained_i - untrained_i`` (negated when
    lower is better, so ``d > 0`` favours the trained model). The untrained model *beats* the
    trained one when ``mean(d) < 0`` and ``t = mean(d) / (sd(d) / sqrt(n)) < -t_{confidence, n-1}``;
    with identical differences (``sd = 0``) any negative mean counts; with one image, any loss.
    Images with a non-finite value on either side are left out.
    """
    from scipy import stats

    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731  (None = NaN in JSON)
    common = sorted(k for k in set(trained) & set(untrained) if finite(trained[k]) and finite(untrained[k]))
    sign = 1.0 if higher_is_better else -1.0
    d = np.array([sign * (trained[k] - untrained[k]) for k in common], dtype=np.float64)
    n = len(d)
    if n == 0:
        return {"images": 0, "mean_difference": math.nan, "t": math.nan, "critical_t": math.nan, "untrained_better": False}
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    critical = float(stats.t.ppf(confidence, n - 1)) if n > 1 else math.nan
    if sd == 0.0:
        t, beaten = (math.inf if mean > 0 else -math.inf if mean < 0 else 0.0), mean < -min_effect
    else:
        t = mean / (sd / math.sqrt(n))
        beaten = mean < -min_effect and t < -critical
    return {"images": n, "mean_difference": mean, "t": float(t), "critical_t": critical, "untrained_better": bool(beaten)}


__all__ = ["MIN_EFFECT", "paired_comparison"]
