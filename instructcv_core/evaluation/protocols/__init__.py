"""Evaluation protocols: how decoded predictions become the numbers of a table.

* :mod:`~instructcv_core.evaluation.protocols.paper` reproduces the official InstructCV evaluation scripts
  (AlaaLab/InstructCV, ``evaluate/``), their flaws included, so that our numbers can be set beside
  the paper's;
* :mod:`~instructcv_core.evaluation.protocols.standard` follows the community conventions of each benchmark
  (dataset-accumulated mIoU over all classes, COCO AP with real scores, NYU depth on raw metres,
  argmax classification).

Both take already-decoded, plain-numpy inputs (masks, score maps, boxes, metres, images) and
return a dict of metrics plus counts and a ``warnings`` list. Units: mIoU, AP and accuracy in
percent (0..100), RMSE in metres, AbsRel and the deltas as fractions. ``docs/protocols.md`` sets
the two side by side and lists every quirk of ``paper``.
"""

from instructcv_core.evaluation.protocols import paper, standard

__all__ = ["paper", "standard"]
