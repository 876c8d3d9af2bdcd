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
hosts combine by addition (:meth:`PanopticQuality.merge`). Fed image by image in
one order, the accumulator reproduces panopticapi's single-process numbers bit
for bit (IoUs are added one match at a time, class averages are summed left to
right); merged states agree to float rounding of the IoU sums (counts exactly).

The per-image core, :func:`segment_statistics`, works on segment tables and is
shared with the COCO-format evaluator :mod:`deeplab_panoptic.evaluation.coco_pq`.
"""

from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

# panopticapi's IoU threshold for a match: strictly greater than one half gives a
# unique matching between non-overlapping segments.
_MATCH_IOU = 0.5
# An unmatched prediction is not a false positive when strictly more than this
# fraction of it lies on VOID and same-class crowd pixels.
_IGNORED_FRACTION = 0.5


# np.bincount over the label range is used to index labels when the range is at
# most this many values (a few MB of counts); np.unique (a sort) otherwise.
_MAX_BINCOUNT_RANGE = 1 << 22


class ImageStatistics(NamedTuple):
  """Panoptic-quality statistics of one image.

  Attributes:
    tp: int64 [num_classes], matched segments.
    fp: int64 [num_classes], unmatched predictions that count.
    fn: int64 [num_classes], unmatched non-crowd ground-truth segments.
    match_classes: int64 [M], class of each match, in (GT id, predicted id) order.
    match_ious: float64 [M], IoU of each match, same order.
  """
  tp: np.ndarray
  fp: np.ndarray
  fn: np.ndarray
  match_classes: np.ndarray
  match_ious: np.ndarray


def _sequential_sum(values: np.ndarray) -> float:
  """Left-to-right float sum (panopticapi's ``+=`` loop; np.sum is pairwise)."""
  total = 0.0
  for v in values.tolist():
    total += v
  return total


def _index_labels(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Distinct labels with, per pixel, the index of its label; like np.unique.

  A bincount over the label range replaces np.unique's sort when the range is
  small (panoptic labels are ``class * label_divisor + instance``): the cost is
  O(pixels) instead of O(pixels log pixels).

  Args:
    labels: int64 [P].

  Returns:
    ids int64 [S] ascending, inverse intp [P] (``ids[inverse] == labels``),
    counts int64 [S].
  """
  lo, hi = int(labels.min()), int(labels.max())
  if hi - lo >= _MAX_BINCOUNT_RANGE:
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return ids, inverse.reshape(-1), counts
  shifted = labels - lo if lo else labels
  counts = np.bincount(shifted, minlength=hi - lo + 1)
  present = np.flatnonzero(counts)
  lookup = np.zeros(hi - lo + 1, np.intp)
  lookup[present] = np.arange(present.size)
  return present + lo, lookup[shifted], counts[present]


def confusion_pairs(gt_index: np.ndarray, pred_index: np.ndarray, num_gt: int,
                    num_pred: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Overlapping (GT segment, predicted segment) pairs and their intersections.

  Args:
    gt_index: int [P], the ground-truth segment index of each pixel, in [0, num_gt).
    pred_index: int [P], the predicted segment index of each pixel, in [0, num_pred).
    num_gt: number of ground-truth segments (void included).
    num_pred: number of predicted segments (void included).

  Returns:
    pair_gt [Q], pair_pred [Q], intersection [Q] (int64), the pairs that share
    pixels, sorted by (GT index, predicted index).
  """
  key = gt_index.astype(np.int64, copy=False) * num_pred + pred_index
  counts = np.bincount(key, minlength=num_gt * num_pred)
  pairs = np.flatnonzero(counts)
  return pairs // num_pred, pairs % num_pred, counts[pairs].astype(np.int64)


def segment_statistics(pair_gt: np.ndarray, pair_pred: np.ndarray, pair_inter: np.ndarray,
                       gt_classes: np.ndarray, gt_areas: np.ndarray, gt_void: np.ndarray,
                       gt_crowd: np.ndarray, gt_crowd_region: np.ndarray,
                       pred_classes: np.ndarray, pred_areas: np.ndarray,
                       pred_void: np.ndarray, num_classes: int) -> ImageStatistics:
  """panopticapi's per-image PQ statistics, vectorised over segments.

  Works on segment tables, so it serves both label maps in this library's
  encoding (:class:`PanopticQuality`) and COCO panoptic PNG + segments_info
  (:mod:`deeplab_panoptic.evaluation.coco_pq`). Segment indices must follow the
  segment ids' order (VOID first) for the matches to come out in panopticapi's
  order.

  Args:
    pair_gt: int [Q], GT segment index of each overlapping pair.
    pair_pred: int [Q], predicted segment index of each pair.
    pair_inter: int64 [Q], pixels the pair shares; pairs sorted by (gt, pred).
    gt_classes: int [Sg], class index of each GT segment (any value where void).
    gt_areas: int64 [Sg], the area panopticapi uses in the union (COCO: the JSON
      ``area``).
    gt_void: bool [Sg], VOID (COCO id 0): left out of unions and matching.
    gt_crowd: bool [Sg], crowd segments: never matched, never false negatives.
    gt_crowd_region: bool [Sg], the crowd segments whose pixels excuse an
      unmatched prediction of their class (panopticapi: the last crowd segment
      of each class in segments_info order).
    pred_classes: int [Sp], class index of each predicted segment (any where void).
    pred_areas: int64 [Sp], pixels of each predicted segment.
    pred_void: bool [Sp], unlabelled prediction (COCO id 0).
    num_classes: C.

  Returns:
    The image's :class:`ImageStatistics`.
  """
  num_pred = pred_areas.size
  gt_cls = gt_classes[pair_gt]
  pr_cls = pred_classes[pair_pred]
  same_class = gt_cls == pr_cls

  # |pred ∩ VOID| and |pred ∩ crowd region of the prediction's class|.
  on_void = gt_void[pair_gt]
  void_inter = np.bincount(pair_pred[on_void], weights=pair_inter[on_void],
                           minlength=num_pred).astype(np.int64)
  on_crowd = gt_crowd_region[pair_gt] & same_class & ~on_void
  crowd_inter = np.bincount(pair_pred[on_crowd], weights=pair_inter[on_crowd],
                            minlength=num_pred).astype(np.int64)

  # Matching: GT neither void nor crowd, prediction not void, same class.
  cand = ~on_void & ~gt_crowd[pair_gt] & ~pred_void[pair_pred] & same_class
  cg, cp, ci = pair_gt[cand], pair_pred[cand], pair_inter[cand]
  union = pred_areas[cp] + gt_areas[cg] - ci - void_inter[cp]
  iou = ci / union
  match = iou > _MATCH_IOU
  mg, mp = cg[match], cp[match]
  match_classes = gt_classes[mg].astype(np.int64)
  tp = np.bincount(match_classes, minlength=num_classes).astype(np.int64)

  gt_matched = np.zeros(gt_areas.size, bool)
  gt_matched[mg] = True
  pred_matched = np.zeros(num_pred, bool)
  pred_matched[mp] = True
  fn_mask = ~gt_void & ~gt_crowd & ~gt_matched
  fn = np.bincount(gt_classes[fn_mask], minlength=num_classes).astype(np.int64)
  with np.errstate(divide="ignore", invalid="ignore"):
    ignored = (void_inter + crowd_inter) / pred_areas > _IGNORED_FRACTION
  fp_mask = ~pred_void & ~pred_matched & ~ignored
  fp = np.bincount(pred_classes[fp_mask], minlength=num_classes).astype(np.int64)
  return ImageStatistics(tp, fp, fn, match_classes, iou[match])


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

  def add_statistics(self, stats: "ImageStatistics") -> None:
    """Adds the statistics of one image (from :func:`segment_statistics`).

    The IoUs of the matches are added one at a time, in the order given, so an
    accumulator fed image by image sums exactly as panopticapi's single-process
    ``pq_compute`` does (same floating-point result, bit for bit).

    Args:
      stats: per-image counts and matches.
    """
    self.tp += stats.tp
    self.fp += stats.fp
    self.fn += stats.fn
    # np.add.at is unbuffered and goes through the matches in order.
    np.add.at(self.iou_sum, stats.match_classes, stats.match_ious)

  def _segments(self, labels: np.ndarray, name: str):
    """Panoptic ids present in one image, with areas, classes and void flags.

    Args:
      labels: int64 [P] panoptic labels of one image.
      name: "ground truth" or "prediction", for messages.

    Returns:
      ids [S] (ascending), inverse [P] (index into ids per pixel), areas [S],
      classes [S], void [S].
    """
    ids, inverse, areas = _index_labels(labels)
    classes = ids // self.label_divisor
    void = classes == self.ignore_label
    bad = ~void & ((ids < 0) | (classes >= self.num_classes))
    if np.any(bad):
      raise ValueError(
          f"PanopticQuality.update: {name} holds panoptic labels "
          f"{ids[bad][:5].tolist()} whose class is neither a train id "
          f"(< {self.num_classes}) nor ignore_label ({self.ignore_label}), "
          f"with label_divisor {self.label_divisor}.")
    return ids, inverse, areas, classes, void

  def _update_image(self, gt: np.ndarray, pred: np.ndarray) -> None:
    """Accumulates one image; gt and pred are [H, W] panoptic labels."""
    gt = gt.astype(np.int64, copy=False).reshape(-1)
    pred = pred.astype(np.int64, copy=False).reshape(-1)
    if gt.size == 0:
      return
    num_c = self.num_classes
    gt_ids, gt_inv, gt_area, gt_cls, gt_void = self._segments(gt, "ground truth")
    pr_ids, pr_inv, pr_area, pr_cls, pr_void = self._segments(pred, "prediction")
    gt_crowd = ~gt_void & self.is_thing[np.clip(gt_cls, 0, num_c - 1)] & (
        gt_ids % self.label_divisor == 0)
    # Void segments get class 0 as a placeholder; every use is masked by the flags.
    gt_cls = np.where(gt_void, 0, gt_cls)
    pr_cls = np.where(pr_void, 0, pr_cls)
    pair_gt, pair_pred, pair_inter = confusion_pairs(gt_inv, pr_inv, gt_ids.size,
                                                     pr_ids.size)
    # In this encoding each class has at most one crowd segment (instance 0).
    self.add_statistics(segment_statistics(
        pair_gt, pair_pred, pair_inter, gt_cls, gt_area, gt_void, gt_crowd, gt_crowd,
        pr_cls, pr_area, pr_void, num_c))

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
    return {"pq": _sequential_sum(pq) / n, "sq": _sequential_sum(sq) / n,
            "rq": _sequential_sum(rq) / n, "n": n}

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
