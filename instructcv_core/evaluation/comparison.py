"""Is a trained model significantly better than the untrained base on the same images? (the
`beats_untrained` check)

The answer must be *earned*: no evidence (no image scored by both, one image only) is "not shown
better", and so is a model identical to the base (every difference zero). There is no
minimum-effect tolerance either way.
"""

from __future__ import annotations

import math

import numpy as np

#: Fewest images scored by both models for the test to say anything (the t-test needs two).
MIN_IMAGES = 2


def paired_comparison(trained: dict[str, float], untrained: dict[str, float], higher_is_better: bool,
                      confidence: float = 0.95) -> dict:
    """Is ``trained`` significantly better than ``untrained`` on the images both were scored on?

    A one-sided paired t-test on per-image values (``scipy.stats.ttest_rel``, alternative
    "greater"): ``d_i = trained_i - untrained_i``, negated when lower is better, so ``d > 0``
    favours the trained model. ``trained_better`` is true when ``p < 1 - confidence``; when every
    difference is the same (``sd = 0``) the test is undefined and only a positive mean counts.
    Fewer than :data:`MIN_IMAGES` common images (non-finite values left out) is never better.
    Returns ``images``, ``mean_difference``, ``t``, ``p_value``, ``trained_better`` and ``reason``.
    """
    from scipy import stats

    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731  (None = NaN in JSON)
    common = sorted(k for k in set(trained) & set(untrained) if finite(trained[k]) and finite(untrained[k]))
    sign = 1.0 if higher_is_better else -1.0
    d = np.array([sign * (trained[k] - untrained[k]) for k in common], dtype=np.float64)
    n = len(d)
    if n < MIN_IMAGES:
        return {"images": n, "mean_difference": float(d.mean()) if n else math.nan, "t": math.nan, "p_value": math.nan,
                "trained_better": False,
                "reason": f"no per-image evidence: {n} image(s) scored by both models (at least {MIN_IMAGES} needed)"}
    mean = float(d.mean())
    if float(d.std(ddof=1)) == 0.0:  # identical differences: a t-test is undefined
        better = mean > 0
        t, p = (math.inf, 0.0) if better else (-math.inf if mean < 0 else math.nan, 1.0)
        reason = ("every image improves by the same amount" if better else
                  "identical to the untrained model on every image" if mean == 0 else "worse on every image")
    else:
        test = stats.ttest_rel(d, np.zeros_like(d), alternative="greater")
        t, p = float(test.statistic), float(test.pvalue)
        better = p < 1.0 - confidence
        reason = (f"significantly better (one-sided paired t-test, p = {p:.3g} < {1 - confidence:.2g})" if better else
                  f"not significantly better (one-sided paired t-test, p = {p:.3g} >= {1 - confidence:.2g})")
    return {"images": n, "mean_difference": mean, "t": float(t), "p_value": float(p), "trained_better": bool(better),
            "reason": reason}


__all__ = ["MIN_IMAGES", "paired_comparison"]
