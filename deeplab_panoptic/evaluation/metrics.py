"""The evaluation suite as one streaming accumulator, built from the declared results.

:class:`SegmentationMetrics` holds one accumulator per result kind a
postprocessor declares (``postprocess/base.py``): exact PQ (panopticapi
semantics) for ``panoptic``, mIoU for ``semantic``, mask AP (pycocotools) for
``instance``. The evaluator feeds it at any batch size and from any number of
replicas, image by image on the host; accumulators of different hosts combine
with :meth:`~SegmentationMetrics.merge` or :meth:`~SegmentationMetrics.merge_state`
(PQ and mIoU states are per-class arrays that add up, AP collects per-image
masks). Fed the same images in the same order, the numbers are those of the exact
host computation. :class:`PanopticMetrics` is the panoptic-model case (all three).
"""

from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import numpy.typing as npt

from deeplab_panoptic import common
from deeplab_panoptic.evaluation.panoptic_quality import PanopticQuality
from deeplab_panoptic.evaluation.semantic_iou import MeanIoU

PANOPTIC = common.PANOPTIC
SEMANTIC = common.SEMANTIC
INSTANCE = common.INSTANCE
INSTANCE_MASKS = common.INSTANCE_MASKS


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


def instance_labels(instance: np.ndarray, segment_classes: npt.ArrayLike,
                    label_divisor: int, ignore_label: int) -> np.ndarray:
  """Instance ids as panoptic labels ``class * label_divisor + id``, void elsewhere.

  Args:
    instance: int [H, W] ``common.INSTANCE`` (0: no instance, ``k + 1``: slot ``k``).
    segment_classes: int [N] ``common.SEGMENT_CLASSES`` of the image.
    label_divisor: the label divisor.
    ignore_label: the void class (pixels without an instance).

  Returns:
    int64 [H, W].

  Raises:
    ValueError: if an instance id is not a slot or its slot has no class.
  """
  classes = np.asarray(segment_classes, np.int64).reshape(-1)
  instance = np.asarray(instance, np.int64)
  ids = np.unique(instance[instance > 0])
  if ids.size and (ids[-1] > classes.size or np.any(classes[ids - 1] < 0)):
    raise ValueError(f"instance_labels: instance ids {ids.tolist()} need slots with a "
                     f"class among {classes.size} segment classes.")
  lookup = np.concatenate([[ignore_label * label_divisor], classes * label_divisor + np.arange(1, classes.size + 1)])
  return lookup[np.clip(instance, 0, classes.size)]


class SegmentationMetrics:
  """The metrics of the declared results: PQ, mIoU, mask AP (any subset).

  Example::

      metrics = SegmentationMetrics({"semantic"}, info.num_classes, info.is_thing,
                                    info.label_divisor, info.ignore_label)
      metrics.update(gt_panoptic, {common.SEMANTIC: pred_semantic})
      metrics.result()["mIoU"]
  """

  def __init__(self, results: Iterable[str], num_classes: int, is_thing: Sequence[bool],
               label_divisor: int, ignore_label: int, compute_ap: Optional[bool] = None):
    """Initialises the accumulators.

    Args:
      results: the declared result kinds (``"panoptic"``, ``"semantic"``,
        ``"instance"``).
      num_classes: number of classes.
      is_thing: per train id.
      label_divisor: panoptic label = semantic * label_divisor + instance.
      ignore_label: the void class.
      compute_ap: collect instance AP for an ``instance`` result; default: when
        the dataset has things.
    """
    self.results = frozenset(results)
    unknown = sorted(self.results - {PANOPTIC, SEMANTIC, INSTANCE, INSTANCE_MASKS})
    if unknown or not self.results:
      raise ValueError(f"SegmentationMetrics: results {sorted(self.results)}; use a "
                       "non-empty subset of panoptic, semantic, instance, instance_masks.")
    self.is_thing = np.asarray(is_thing, bool)
    self.label_divisor = int(label_divisor)
    self.ignore_label = int(ignore_label)
    self.pq = (PanopticQuality(num_classes, is_thing, label_divisor, ignore_label)
               if PANOPTIC in self.results else None)
    self.miou = MeanIoU(num_classes, ignore_label) if SEMANTIC in self.results else None
    if compute_ap is None:
      compute_ap = bool(np.any(self.is_thing))
    self.ap = None
    if compute_ap and self.results & {INSTANCE, INSTANCE_MASKS}:
      # pycocotools is imported only when AP is wanted.
      from deeplab_panoptic.evaluation.instance_ap import InstanceAP  # pylint: disable=g-import-not-at-top
      self.ap = InstanceAP(is_thing, label_divisor, ignore_label)

  def _parts(self) -> Dict[str, Any]:
    parts = {"pq": self.pq, "miou": self.miou, "ap": self.ap}
    return {k: v for k, v in parts.items() if v is not None}

  def reset(self) -> None:
    """Clears every accumulator."""
    for part in self._parts().values():
      part.reset()

  def update(self, gt_panoptic: npt.ArrayLike, predictions: Mapping[str, npt.ArrayLike],
             image_ids: Optional[Sequence[Any]] = None) -> None:
    """Accumulates one image (maps ``[H, W]``, per-slot ``[N]``) or a batch.

    Args:
      gt_panoptic: int [H, W] or [B, H, W] ground-truth panoptic labels.
      predictions: the postprocessor's results at the same resolution:
        ``common.PANOPTIC`` (for PQ), ``common.SEMANTIC`` (for mIoU); for AP
        ``common.INSTANCE_MASKS`` ``[(B,) H, W, K]`` with ``INSTANCE_CLASSES`` and
        ``INSTANCE_SCORES`` when ``instance_masks`` is declared, else
        ``common.INSTANCE`` with ``SEGMENT_CLASSES`` and ``SEGMENT_SCORES``.
      image_ids: per image, its id in the COCO results list of the instance
        masks (``InstanceAP.coco_results``); None: positions.

    Raises:
      ValueError: on a missing result, inconsistent shapes or labels.
    """
    gt = np.asarray(gt_panoptic)
    if gt.ndim not in (2, 3):
      raise ValueError(f"SegmentationMetrics.update: ground truth {gt.shape} must be "
                       "[H, W] or [B, H, W].")
    batched = gt.ndim == 3
    gt = gt if batched else gt[np.newaxis]
    arrays = {}
    for key in self._needed_keys():
      if key not in predictions:
        raise ValueError(f"SegmentationMetrics.update: {key!r} is needed for the "
                         f"declared results {sorted(self.results)}.")
      value = np.asarray(predictions[key])
      arrays[key] = value if batched else value[np.newaxis]
    for key in (PANOPTIC, SEMANTIC, INSTANCE):
      if key in arrays and arrays[key].shape != gt.shape:
        raise ValueError(f"SegmentationMetrics.update: ground truth {gt.shape} and "
                         f"{key} {arrays[key].shape} differ in shape.")
    if INSTANCE_MASKS in arrays and arrays[INSTANCE_MASKS].shape[:3] != gt.shape:
      raise ValueError(f"SegmentationMetrics.update: ground truth {gt.shape} and "
                       f"{INSTANCE_MASKS} {arrays[INSTANCE_MASKS].shape} differ in size.")
    if self.pq is not None:
      self.pq.update(gt, arrays[PANOPTIC])
    if self.miou is not None:
      self.miou.update(gt // self.label_divisor, arrays[SEMANTIC])
    if self.ap is not None and INSTANCE_MASKS in self.results:
      for i in range(gt.shape[0]):
        self.ap.update_instances(
            gt[i], arrays[INSTANCE_MASKS][i], arrays[common.INSTANCE_CLASSES][i],
            arrays[common.INSTANCE_SCORES][i],
            None if image_ids is None else list(image_ids)[i])
    elif self.ap is not None:
      self._update_ap(gt, arrays)

  def _needed_keys(self):
    keys = [k for k, part in ((PANOPTIC, self.pq), (SEMANTIC, self.miou)) if part is not None]
    if self.ap is not None and INSTANCE_MASKS in self.results:
      # Overlapping instance masks, when declared, are what AP scores.
      keys += [INSTANCE_MASKS, common.INSTANCE_CLASSES, common.INSTANCE_SCORES]
    elif self.ap is not None:
      # Thing instances are read from the panoptic map when there is one (thing
      # instance k + 1 is slot k in both), else from the instance map.
      keys += [] if PANOPTIC in self.results else [INSTANCE, common.SEGMENT_CLASSES]
      keys.append(common.SEGMENT_SCORES)
    return keys

  def _update_ap(self, gt: np.ndarray, arrays: Mapping[str, np.ndarray]) -> None:
    scores = arrays[common.SEGMENT_SCORES].reshape(gt.shape[0], -1)
    for i in range(gt.shape[0]):
      if PANOPTIC in arrays:
        labels = arrays[PANOPTIC][i]
      else:
        classes = arrays[common.SEGMENT_CLASSES].reshape(gt.shape[0], -1)[i]
        labels = instance_labels(arrays[INSTANCE][i], classes, self.label_divisor,
                                 self.ignore_label)
      self.ap.update(gt[i], labels, scores_from_slots(
          labels, scores[i], self.is_thing, self.label_divisor))

  def state(self) -> Dict[str, Any]:
    """Plain state of every accumulator (to combine across replicas or hosts)."""
    return {name: part.state() for name, part in self._parts().items()}

  def merge_state(self, state: Mapping[str, Any]) -> "SegmentationMetrics":
    """Adds a state from :meth:`state`; returns self."""
    for name, part in self._parts().items():
      if name not in state:
        raise ValueError(f"SegmentationMetrics.merge_state: the state has no {name!r} part.")
      part.merge_state(state[name])
    return self

  def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
    """Adds another accumulator with the same parts; returns self."""
    mine, theirs = self._parts(), other._parts()  # pylint: disable=protected-access
    if set(mine) != set(theirs):
      raise ValueError(f"SegmentationMetrics.merge: parts {sorted(mine)} and "
                       f"{sorted(theirs)} differ.")
    for name, part in mine.items():
      part.merge(theirs[name])
    return self

  def result(self) -> Dict[str, Any]:
    """``{"PQ": PanopticQuality.result()?, "mIoU": fraction?, "AP": {...}?}``: the
    entries of the accumulators that run (AP also None when not collected)."""
    result: Dict[str, Any] = {}
    if self.pq is not None:
      result["PQ"] = self.pq.result()
    if self.miou is not None:
      result["mIoU"] = self.miou.result()["miou"]
    if self.results & {INSTANCE, INSTANCE_MASKS}:
      result["AP"] = self.ap.result(per_class=True) if self.ap is not None else None
    return result


class PanopticMetrics(SegmentationMetrics):
  """PQ, mIoU and, for datasets with things, mask AP of a panoptic prediction.

  Example::

      metrics = PanopticMetrics(info.num_classes, info.is_thing,
                                info.label_divisor, info.ignore_label)
      metrics.update(gt, pred_panoptic, pred_semantic, segment_scores)
      metrics.result()["PQ"]["All"]["pq"], metrics.result()["mIoU"]
  """

  def __init__(self, num_classes: int, is_thing: Sequence[bool], label_divisor: int,
               ignore_label: int, compute_ap: Optional[bool] = None):
    super().__init__((PANOPTIC, SEMANTIC, INSTANCE), num_classes, is_thing,
                     label_divisor, ignore_label, compute_ap)

  def update(self, gt_panoptic: npt.ArrayLike, pred_panoptic: npt.ArrayLike,  # pylint: disable=arguments-renamed
             pred_semantic: Optional[npt.ArrayLike] = None,
             segment_scores: Optional[npt.ArrayLike] = None) -> None:
    """Accumulates one image or a batch (all at the same resolution).

    Args:
      gt_panoptic: int [H, W] or [B, H, W] ground-truth panoptic labels.
      pred_panoptic: int, same shape, predicted panoptic labels.
      pred_semantic: int, same shape, ``common.SEMANTIC``; default:
        ``pred_panoptic // divisor``.
      segment_scores: float [N] or [B, N], ``common.SEGMENT_SCORES``; required
        when AP is collected (thing instance ``k + 1`` is slot ``k``).
    """
    pred = np.asarray(pred_panoptic)
    if np.shape(gt_panoptic) != pred.shape:
      raise ValueError(f"PanopticMetrics.update: ground truth {np.shape(gt_panoptic)} and "
                       f"prediction {pred.shape} must both be [H, W] or [B, H, W].")
    semantic = (pred // self.label_divisor if pred_semantic is None
                else np.asarray(pred_semantic).reshape(pred.shape))
    predictions = {PANOPTIC: pred, SEMANTIC: semantic}
    if self.ap is not None:
      if segment_scores is None:
        raise ValueError("PanopticMetrics.update: segment_scores are needed for AP.")
      predictions[common.SEGMENT_SCORES] = np.asarray(segment_scores)
    super().update(gt_panoptic, predictions)
