"""The evaluation suite as one streaming accumulator: PQ, mIoU and instance AP.

:class:`PanopticMetrics` is what the evaluator feeds, at any batch size and
from any number of replicas: each replica's outputs are added image by image on
the host, and accumulators of different hosts combine with :meth:`merge` or
:meth:`merge_state` (PQ and mIoU states are per-class arrays that add up, AP
collects per-image masks). Fed the same images in the same order, the numbers
are those of the exact host computation (panopticapi's for PQ).
"""

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import numpy.typing as npt

from deeplab_panoptic.evaluation.panoptic_quality import PanopticQuality
from deeplab_panoptic.evaluation.semantic_iou import MeanIoU


def scores_from_slots(pred_panoptic: np.ndarray, segment_scores: npt.ArrayLike,
                      is_thing: np.ndarray, label_divisor: int) -> Dict[int, float]:
  """Score of each predicted thing segment from its mask slot's class confidence.

  The postprocessor gives thing slot ``k`` instance id ``k + 1``
  (``postprocess.panoptic``), so the score of thing label ``c * divisor + i`` is
  ``segment_scores[i - 1]``.

  Args:
    pred_panoptic: int [H, W] predicted panoptic labels.
    segment_scores: float [N], ``common.SEGMENT_SCORES`` of the image.
    is_thing: bool [num_classes].
    label_divisor: the label divisor.

  Returns:
    panoptic label -> score, for every thing label present.

  Raises:
    ValueError: if a thing instance id is not a slot.
  """
  scores = np.asarray(segment_scores, np.float64).reshape(-1)
  labels = np.unique(pred_panoptic)
  classes = labels // label_divisor
  result = {}
  for label, cls in zip(labels.tolist(), classes.tolist()):
    if 0 <= cls < is_thing.size and is_thing[cls]:
      instance = label % label_divisor
      if not 1 <= instance <= scores.size:
        raise ValueError(f"scores_from_slots: thing label {label} has instance "
                         f"{instance}, not a slot in 1..{scores.size}.")
      result[label] = float(scores[instance - 1])
  return result


class PanopticMetrics:
  """PQ (panopticapi semantics), mIoU and, for datasets with things, mask AP.

  Example::

      metrics = PanopticMetrics(info.num_classes, info.is_thing,
                                info.label_divisor, info.ignore_label)
      metrics.update(gt, pred_panoptic, pred_semantic, segment_scores)
      metrics.result()["PQ"]["All"]["pq"], metrics.result()["mIoU"]
  """

  def __init__(self, num_classes: int, is_thing: Sequence[bool], label_divisor: int,
               ignore_label: int, compute_ap: Optional[bool] = None):
    """Initialises the accumulators.

    Args:
      num_classes: number of classes.
      is_thing: per train id.
      label_divisor: panoptic label = semantic * label_divisor + instance.
      ignore_label: the void class.
      compute_ap: collect instance AP; default: when the dataset has things.
    """
    self.is_thing = np.asarray(is_thing, bool)
    self.label_divisor = int(label_divisor)
    self.ignore_label = int(ignore_label)
    self.pq = PanopticQuality(num_classes, is_thing, label_divisor, ignore_label)
    self.miou = MeanIoU(num_classes, ignore_label)
    if compute_ap is None:
      compute_ap = bool(np.any(self.is_thing))
    self.ap = None
    if compute_ap:
      # pycocotools is imported only when AP is wanted.
      from deeplab_panoptic.evaluation.instance_ap import InstanceAP  # pylint: disable=g-import-not-at-top
      self.ap = InstanceAP(is_thing, label_divisor, ignore_label)

  def reset(self) -> None:
    """Clears every accumulator."""
    self.pq.reset()
    self.miou.reset()
    if self.ap is not None:
      self.ap.reset()

  def update(self, gt_panoptic: npt.ArrayLike, pred_panoptic: npt.ArrayLike,
             pred_semantic: Optional[npt.ArrayLike] = None,
             segment_scores: Optional[npt.ArrayLike] = None) -> None:
    """Accumulates one image or a batch (all at the same resolution).

    Args:
      gt_panoptic: int [H, W] or [B, H, W] ground-truth panoptic labels.
      pred_panoptic: int, same shape, predicted panoptic labels.
      pred_semantic: int, same shape, ``common.SEMANTIC`` (train ids,
        ignore_label where unlabelled); default: ``pred_panoptic // divisor``.
      segment_scores: float [N] or [B, N], ``common.SEGMENT_SCORES``; required
        when AP is collected.

    Raises:
      ValueError: on inconsistent shapes or labels.
    """
    gt = np.asarray(gt_panoptic)
    pred = np.asarray(pred_panoptic)
    if gt.shape != pred.shape or gt.ndim not in (2, 3):
      raise ValueError(f"PanopticMetrics.update: ground truth {gt.shape} and prediction "
                       f"{pred.shape} must both be [H, W] or [B, H, W].")
    single = gt.ndim == 2
    if single:
      gt, pred = gt[np.newaxis], pred[np.newaxis]
    if pred_semantic is None:
      semantic = pred // self.label_divisor
    else:
      semantic = np.asarray(pred_semantic).reshape(pred.shape)
    if self.ap is not None:
      if segment_scores is None:
        raise ValueError("PanopticMetrics.update: segment_scores are needed for AP.")
      scores = np.asarray(segment_scores)
      scores = scores.reshape(gt.shape[0], -1)
    self.pq.update(gt, pred)
    self.miou.update(gt // self.label_divisor, semantic)
    if self.ap is not None:
      for i in range(gt.shape[0]):
        self.ap.update(gt[i], pred[i], scores_from_slots(
            pred[i], scores[i], self.is_thing, self.label_divisor))

  def state(self) -> Dict[str, Any]:
    """Plain state of every accumulator (to combine across replicas or hosts)."""
    state = {"pq": self.pq.state(), "miou": self.miou.state()}
    if self.ap is not None:
      state["ap"] = self.ap.state()
    return state

  def merge_state(self, state: Mapping[str, Any]) -> "PanopticMetrics":
    """Adds a state from :meth:`state`; returns self."""
    self.pq.merge_state(state["pq"])
    self.miou.merge_state(state["miou"])
    if self.ap is not None:
      if "ap" not in state:
        raise ValueError("PanopticMetrics.merge_state: the state has no AP part.")
      self.ap.merge_state(state["ap"])
    return self

  def merge(self, other: "PanopticMetrics") -> "PanopticMetrics":
    """Adds another accumulator; returns self."""
    self.pq.merge(other.pq)
    self.miou.merge(other.miou)
    if (self.ap is None) != (other.ap is None):
      raise ValueError("PanopticMetrics.merge: only one accumulator collects AP.")
    if self.ap is not None:
      self.ap.merge(other.ap)
    return self

  def result(self) -> Dict[str, Any]:
    """``{"PQ": PanopticQuality.result(), "mIoU": fraction, "AP": {...} or None}``."""
    return {"PQ": self.pq.result(), "mIoU": self.miou.result()["miou"],
            "AP": self.ap.result() if self.ap is not None else None}
