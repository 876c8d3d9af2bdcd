"""Exact panoptic quality with the semantics of the COCO panoptic evaluation.

Follows panopticapi's ``pq_compute`` (Kirillov et al., "Panoptic Segmentation")
image by image, on labels in this library's encoding
(``semantic * label_divisor + instance``):

* A segment is the set of pixels sharing one panoptic id (not a connected
  component).
* GT pixels whose semantic label is ``ignore_label`` are VOID. A GT thing pixel
  with instance 0 is *crowd* (panopticapi's ``iscrowd=1``); a stuff pixel with
  instance 0 is an ordinary stuff segment. Predicted pixels whose semantic label
  is ``ignore_label`` are unlabelled (panopticapi's prediction id 0).
* A GT segment (not crowd) and a predicted segment of the same class match if
  ``IoU > 0.5`` with ``union = pred_area + gt_area - intersection -
  |pred ∩ VOID|``; each match adds one TP and its IoU.
* Unmatched non-crowd GT segments are FN.
* An unmatched predicted segment is FP unless more than half of it lies on VOID
  plus the crowd region of its own class.
* Per class: ``PQ = ΣIoU / (TP + FP/2 + FN/2)``, ``SQ = ΣIoU / TP``,
  ``RQ = TP / (TP + FP/2 + FN/2)``; classes with ``TP + FP + FN == 0`` are left
  out of the averages over All / Things / Stuff.

The state is four plain per-class arrays, so accumulators from replicas or
hosts combine by addition (:meth:`PanopticQuality.merge`).
"""

from typing import Dict, Optional, Sequence

import numpy as np
import numpy.typing as npt

# panopticapi's IoU threshold for a match: strictly greater than one half gives a
# unique matching between non-overlapping segments.
_MATCH_IOU = 0.5
# An unmatched prediction is not a false positive when strictly more than this
# fraction of it lies on VOID and same-class crowd pixels.
_IGNORED_FRACTION = 0.5


class PanopticQuality:
  """Streaming panoptic-quality accumulator (numpy, host side).

  Attributes:
    iou_sum: float64 [num_classes], summed IoU of the true positives.
    tp: int64 [num_classes], true positives.
    fp: int64 [num_classes], false positives.
    fn: int64 [num_classes], false negatives.
  """

  def __init__(self, num_classes: int, is_thing: Sequence[bool], label_divisor: int,
               ignore_label: int):
    """Initialises an empty accumulator.

    Args:
      num_classes: number of classes (train ids ``0 .. num_classes - 1``).
      is_thing: per train id, whether the class is a thing.
      label_divisor: panoptic label = semantic * label_divisor + instance.
      ignore_label: semantic label of void pixels; must be >= num_classes.

    Raises:
      ValueError: on an inconsistent configuration.
    """
    if len(is_thing) != num_classes:
      raise ValueError(f"PanopticQuality: is_thing has {len(is_thing)} entries, "
                       f"expected num_classes = {num_classes}.")
    if ignore_label < num_classes:
      raise ValueError(f"PanopticQuality: ignore_label {ignore_label} must be >= "
                       f"num_classes ({num_classes}).")
    if label_divisor <= 0:
      raise ValueError("PanopticQuality: label_divisor must be positive.")
    self.num_classes = int(num_classes)
    self.is_thing = np.asarray(is_thing, dtype=bool)
    self.label_divisor = int(label_divisor)
    self.ignore_label = int(ignore_label)
    self.reset()

  def reset(self) -> None:
    """Clears the accumulated statistics."""
    self.iou_sum = np.zeros(self.num_classes, np.float64)
    self.tp = np.zeros(self.num_classes, np.int64)
    self.fp = np.zeros(self.num_classes, np.int64)
    self.fn = np.zeros(self.num_classes, np.int64)

  def merge(self, other: "PanopticQuality") -> "PanopticQuality":
    """Adds another accumulator's statistics to this one (e.g. from a replica).

    Args:
      other: an accumulator with the same configuration.

    Returns:
      self.

    Raises:
      ValueError: if the configurations differ.
    """
    if (other.num_classes != self.num_classes or
        other.label_divisor != self.label_divisor or
        other.ignore_label != self.ignore_label or
        not np.array_equal(other.is_thing, self.is_thing)):
      raise ValueError("PanopticQuality.merge: the accumulators are configured "
                       "differently (classes, thing flags, divisor or ignore label).")
    return self.merge_state(other.state())

  def state(self) -> Dict[str, np.ndarray]:
    """The accumulated statistics as plain arrays (to sum across replicas/hosts).

    Returns:
      ``{"iou_sum": float64 [C], "tp": int64 [C], "fp": int64 [C], "fn": int64 [C]}``
      (copies).
    """
    return {"iou_sum": self.iou_sum.copy(), "tp": self.tp.copy(),
            "fp": self.fp.copy(), "fn": self.fn.copy()}

  def merge_state(self, state: Dict[str, npt.ArrayLike]) -> "PanopticQuality":
    """Adds statistics given as arrays, e.g. summed from other hosts.

    Args:
      state: a dict like :meth:`state` returns.

    Returns:
      self.

    Raises:
      ValueError: if an array has the wrong shape.
    """
    for name in ("iou_sum", "tp", "fp", "fn"):
      value = np.asarray(state[name])
      if value.shape != (self.num_classes,):
        raise ValueError(f"PanopticQuality.merge_state: {name} has shape "
                         f"{value.shape}, expected ({self.num_classes},).")
      current = getattr(self, name)
      setattr(self, name, current + value.astype(current.dtype))
    return self

  def update(self, gt_panoptic: npt.ArrayLike, pred_panoptic: npt.ArrayLike,
             image_sizes: Optional[npt.ArrayLike] = None) -> None:
    """Accumulates one image or a batch.

    Args:
      gt_panoptic: int [H, W] or [B, H, W] ground-truth panoptic labels (numpy
        array or eager tensor).
      pred_panoptic: int, same shape, predicted panoptic labels.
      image_sizes: optional int [B, 2] (or [2] for one image), the valid
        (height, width) of each image; pixels outside (padding) are left out, as
        if the images had been cropped.

    Raises:
      ValueError: on mismatched shapes or labels outside the known classes.
    """
    gt = np.asarray(gt_panoptic)
    pred = np.asarray(pred_panoptic)
    if gt.shape != pred.shape or gt.ndim not in (2, 3):
      raise ValueError(f"PanopticQuality.update: ground truth {gt.shape} and "
                       f"prediction {pred.shape} must both be [H, W] or [B, H, W].")
    if gt.ndim == 2:
      gt, pred = gt[np.newaxis], pred[np.newaxis]
      if image_sizes is not None:
        image_sizes = np.reshape(image_sizes, [1, 2])
    if image_sizes is not None:
      image_sizes = np.asarray(image_sizes)
      if image_sizes.shape != (gt.shape[0], 2):
        raise ValueError(f"PanopticQuality.update: image_sizes {image_sizes.shape} "
                         f"must be [{gt.shape[0]}, 2].")
    for i in range(gt.shape[0]):
      g, p = gt[i], pred[i]
      if image_sizes is not None:
        h, w = int(image_sizes[i][0]), int(image_sizes[i][1])
        g, p = g[:h, :w], p[:h, :w]
      self._update_image(g, p)

  def _segments(self, labels: np.ndarray, name: str):
    """Unique panoptic ids with their areas, classes and void flags.

    Args:
      labels: int64 [P] panoptic labels of one image.
      name: "ground truth" or "prediction", for messages.

    Returns:
      ids [S], inverse [P] (index into ids per pixel), areas [S], classes [S],
      void [S].
    """
    ids, inverse, areas = np.unique(labels, return_inverse=True, return_counts=True)
    classes = ids // self.label_divisor
    void = classes == self.ignore_label
    bad = ~void & ((ids < 0) | (classes >= self.num_classes))
    if np.any(bad):
      raise ValueError(
          f"PanopticQuality.update: {name} holds panoptic labels "
          f"{ids[bad][:5].tolist()} whose class is neither a train id "
          f"(< {self.num_classes}) nor ignore_label ({self.ignore_label}), "
          f"with label_divisor {self.label_divisor}.")
    return ids, inverse.reshape(-1), areas, classes, void

  def _update_image(self, gt: np.ndarray, pred: np.ndarray) -> None:
    """Accumulates one image; gt and pred are [H, W] panoptic labels."""
    gt = gt.astype(np.int64).reshape(-1)
    pred = pred.astype(np.int64).reshape(-1)
    if gt.size == 0:
      return
    num_c = self.num_classes
    gt_ids, gt_inv, gt_area, gt_cls, gt_void = self._segments(gt, "ground truth")
    pr_ids, pr_inv, pr_area, pr_cls, pr_void = self._segments(pred, "prediction")
    gt_crowd = ~gt_void & self.is_thing[np.minimum(gt_cls, num_c - 1)] & (
        gt_ids % self.label_divisor == 0)

    # Confusion between segment indices: one np.unique over a combined key.
    num_pr = pr_ids.size
    pairs, inter = np.unique(gt_inv * num_pr + pr_inv, return_counts=True)
    pg, pp = pairs // num_pr, pairs % num_pr

    # |pred ∩ VOID| and |pred ∩ crowd of the prediction's class| per prediction.
    on_void = gt_void[pg]
    void_inter = np.bincount(pp[on_void], weights=inter[on_void], minlength=num_pr)
    on_crowd = gt_crowd[pg] & (gt_cls[pg] == pr_cls[pp])
    crowd_inter = np.bincount(pp[on_crowd], weights=inter[on_crowd], minlength=num_pr)

    # Matching: GT neither void nor crowd, prediction not void, same class.
    cand = (~gt_void[pg] & ~gt_crowd[pg] & ~pr_void[pp] & (gt_cls[pg] == pr_cls[pp]))
    cg, cp, ci = pg[cand], pp[cand], inter[cand]
    union = pr_area[cp] + gt_area[cg] - ci - void_inter[cp]
    iou = ci / union
    match = iou > _MATCH_IOU
    mg, mp, miou = cg[match], cp[match], iou[match]
    self.tp += np.bincount(gt_cls[mg], minlength=num_c).astype(np.int64)
    self.iou_sum += np.bincount(gt_cls[mg], weights=miou, minlength=num_c)

    gt_matched = np.zeros(gt_ids.size, bool)
    gt_matched[mg] = True
    pr_matched = np.zeros(num_pr, bool)
    pr_matched[mp] = True

    fn = ~gt_void & ~gt_crowd & ~gt_matched
    self.fn += np.bincount(gt_cls[fn], minlength=num_c).astype(np.int64)

    ignored = (void_inter + crowd_inter) / pr_area > _IGNORED_FRACTION
    fp = ~pr_void & ~pr_matched & ~ignored
    self.fp += np.bincount(pr_cls[fp], minlength=num_c).astype(np.int64)

  def _average(self, select: np.ndarray) -> Dict[str, float]:
    """PQ, SQ, RQ averaged over the selected classes that occur."""
    tp, fp, fn = (self.tp.astype(np.float64), self.fp.astype(np.float64),
                  self.fn.astype(np.float64))
    present = select & (self.tp + self.fp + self.fn > 0)
    n = int(np.sum(present))
    if n == 0:
      # panopticapi divides by zero here; an empty group reports zeros.
      return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    denom = tp + 0.5 * fp + 0.5 * fn
    pq = self.iou_sum[present] / denom[present]
    sq = np.where(tp[present] > 0, self.iou_sum[present] / np.maximum(tp[present], 1), 0.0)
    rq = tp[present] / denom[present]
    return {"pq": float(np.sum(pq) / n), "sq": float(np.sum(sq) / n),
            "rq": float(np.sum(rq) / n), "n": n}

  def per_class(self) -> Dict[int, Dict[str, float]]:
    """Per train id PQ, SQ, RQ (zeros for classes that never occur)."""
    results = {}
    for c in range(self.num_classes):
      tp, fp, fn = int(self.tp[c]), int(self.fp[c]), int(self.fn[c])
      if tp + fp + fn == 0:
        results[c] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        continue
      denom = tp + 0.5 * fp + 0.5 * fn
      iou = float(self.iou_sum[c])
      results[c] = {"pq": iou / denom, "sq": iou / tp if tp else 0.0, "rq": tp / denom}
    return results

  def result(self) -> Dict[str, Dict]:
    """The panopticapi result structure (fractions, not percent).

    Returns:
      ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class":
      {train_id: {"pq", "sq", "rq"}}}``.
    """
    all_classes = np.ones(self.num_classes, bool)
    return {
        "All": self._average(all_classes),
        "Things": self._average(self.is_thing),
        "Stuff": self._average(~self.is_thing),
        "per_class": self.per_class(),
    }
