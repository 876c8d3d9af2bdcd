"""Mean intersection-over-union of a semantic prediction, as a streaming accumulator.

Ground-truth pixels labelled ``ignore_label`` (void) are left out. A predicted
``ignore_label`` (a pixel the panoptic postprocessor left unlabelled) at a
labelled pixel is a miss for the ground-truth class and a hit for no class.
Classes absent from both the ground truth and the prediction are left out of
the mean. The state is one integer confusion matrix, so accumulators from
replicas or hosts merge exactly by addition.
"""

from typing import Dict, Optional

import numpy as np
import numpy.typing as npt


class MeanIoU:
  """Streaming confusion matrix and mIoU (numpy, host side).

  Attributes:
    confusion: int64 [num_classes, num_classes + 1]; row = ground-truth class,
      column = predicted class, last column = predicted void.
  """

  def __init__(self, num_classes: int, ignore_label: int):
    """Initialises an empty accumulator.

    Args:
      num_classes: number of classes (train ids ``0 .. num_classes - 1``).
      ignore_label: the void label; must be >= num_classes.

    Raises:
      ValueError: on an inconsistent configuration.
    """
    if ignore_label < num_classes:
      raise ValueError(f"MeanIoU: ignore_label {ignore_label} must be >= num_classes "
                       f"({num_classes}).")
    self.num_classes = int(num_classes)
    self.ignore_label = int(ignore_label)
    self.reset()

  def reset(self) -> None:
    """Clears the confusion matrix."""
    self.confusion = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

  def update(self, gt_semantic: npt.ArrayLike, pred_semantic: npt.ArrayLike) -> None:
    """Accumulates one image or a batch.

    Args:
      gt_semantic: int [H, W] or [B, H, W] train ids, ignore_label at void.
      pred_semantic: int, same shape, predicted train ids or ignore_label.

    Raises:
      ValueError: on mismatched shapes or labels outside the classes.
    """
    if np.shape(gt_semantic) != np.shape(pred_semantic):
      raise ValueError(f"MeanIoU.update: ground truth {np.shape(gt_semantic)} and "
                       f"prediction {np.shape(pred_semantic)} differ in shape.")
    c = self.num_classes
    # One lookup per pixel maps a label to its row / column (void: c, invalid:
    # -1), instead of several comparisons over the image.
    table = np.full(self.ignore_label + 1, -1, np.int32)
    table[:c] = np.arange(c, dtype=np.int32)
    table[self.ignore_label] = c
    index = []
    for name, labels in (("ground truth", gt_semantic), ("prediction", pred_semantic)):
      labels = np.asarray(labels).reshape(-1)
      if labels.size == 0:
        return
      lo, hi = int(labels.min()), int(labels.max())
      mapped = table[np.clip(labels, 0, self.ignore_label)] if (
          lo < 0 or hi > self.ignore_label) else table[labels]
      bad = mapped < 0
      if lo < 0 or hi > self.ignore_label or np.any(bad):
        bad |= (labels < 0) | (labels > self.ignore_label)
        raise ValueError(f"MeanIoU.update: {name} holds labels "
                         f"{np.unique(labels[bad])[:5].tolist()} that are neither train "
                         f"ids (< {c}) nor ignore_label ({self.ignore_label}).")
      index.append(mapped)
    key = index[0] * np.int32(c + 1)
    key += index[1]
    # Row c (void ground truth) is counted, then dropped.
    counts = np.bincount(key, minlength=(c + 1) * (c + 1)).reshape(c + 1, c + 1)
    self.confusion += counts[:c]

  def state(self) -> Dict[str, np.ndarray]:
    """``{"confusion": int64 [C, C + 1]}`` (a copy), to sum across replicas/hosts."""
    return {"confusion": self.confusion.copy()}

  def merge_state(self, state: Dict[str, npt.ArrayLike]) -> "MeanIoU":
    """Adds a confusion matrix from another accumulator; returns self."""
    value = np.asarray(state["confusion"])
    if value.shape != self.confusion.shape:
      raise ValueError(f"MeanIoU.merge_state: confusion has shape {value.shape}, "
                       f"expected {self.confusion.shape}.")
    self.confusion += value.astype(np.int64)
    return self

  def merge(self, other: "MeanIoU") -> "MeanIoU":
    """Adds another accumulator's confusion matrix; returns self."""
    if other.num_classes != self.num_classes or other.ignore_label != self.ignore_label:
      raise ValueError("MeanIoU.merge: the accumulators are configured differently.")
    return self.merge_state(other.state())

  def per_class_iou(self) -> np.ndarray:
    """float64 [C] IoU per class, NaN where the class is absent from both sides."""
    c = self.num_classes
    tp = np.diag(self.confusion[:, :c]).astype(np.float64)
    gt_total = self.confusion.sum(axis=1)
    pred_total = self.confusion[:, :c].sum(axis=0)
    union = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(union > 0, tp / union, np.nan)

  def result(self) -> Dict[str, Optional[float]]:
    """``{"miou": fraction over present classes (0 when none), "n": classes counted}``."""
    iou = self.per_class_iou()
    present = ~np.isnan(iou)
    n = int(np.sum(present))
    return {"miou": float(np.mean(iou[present])) if n else 0.0, "n": n}
