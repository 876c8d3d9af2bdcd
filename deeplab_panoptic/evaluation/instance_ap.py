"""Instance AP of thing segments or of overlapping instance masks, via pycocotools.

The ground truth is the thing segments of the panoptic ground truth (crowd
regions as ``iscrowd`` annotations, which COCOeval ignores detections on); void
pixels carry no annotation. The detections are either

* the thing segments of a panoptic prediction (:meth:`InstanceAP.update`), as
  Panoptic SegFormer reports it ("AP from the panoptic output"): each segment's
  score is the class confidence of its mask slot; or
* overlapping instance masks with their classes and scores
  (:meth:`InstanceAP.update_instances`; Mask2Former's instance inference,
  ``postprocess/mask_results.py``).

Detections become a COCO results list (:meth:`InstanceAP.coco_results`, RLE from
``pycocotools.mask.encode``, what ``loadRes`` reads from a results JSON) that
COCOeval scores: COCO's mask AP@[.5:.95], 100 detections per image.

The state is per-image lists of run-length-encoded masks, so accumulators from
replicas or hosts merge by concatenation; the result is computed once at the end.
"""

import contextlib
import io
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deeplab_panoptic.evaluation import panoptic_quality


def _encode(index: np.ndarray, wanted: np.ndarray) -> List[Dict[str, Any]]:
  """COCO RLE masks of the segments ``wanted`` of an index map.

  The runs of every segment come from one pass over the column-major index map
  (COCO RLE order), instead of one full-image mask and encode per segment.

  Args:
    index: int [H, W], segment index per pixel.
    wanted: int [K], segment indices.

  Returns:
    K compressed COCO RLE dicts (equal to ``pycocotools.mask.encode``'s).
  """
  if wanted.size == 0:
    return []
  height, width = index.shape
  flat = np.ascontiguousarray(index.T).reshape(-1)
  size = flat.size
  change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  starts = np.concatenate([[0], change])
  ends = np.concatenate([change, [size]])
  values = flat[starts]
  order = np.argsort(values, kind="stable")
  sorted_values = values[order]
  lows = np.searchsorted(sorted_values, wanted, side="left")
  highs = np.searchsorted(sorted_values, wanted, side="right")
  rles = []
  for lo, hi in zip(lows.tolist(), highs.tolist()):
    runs = order[lo:hi]  # this segment's runs, in position order (stable sort)
    s, e = starts[runs], ends[runs]
    # Alternating zeros / ones, starting with zeros (possibly 0 of them).
    counts = np.empty(2 * s.size + 1, np.int64)
    counts[0] = s[0]
    counts[1::2] = e - s
    counts[2:-1:2] = s[1:] - e[:-1]
    counts[-1] = size - e[-1]
    if counts[-1] == 0:
      counts = counts[:-1]
    rles.append({"size": [height, width], "counts": counts.tolist()})
  return mask_utils.frPyObjects(rles, height, width)


class InstanceAP:
  """Streaming collector of thing segments for COCO mask AP."""

  def __init__(self, is_thing: Sequence[bool], label_divisor: int, ignore_label: int):
    """Initialises an empty accumulator.

    Args:
      is_thing: per train id, whether the class is a thing.
      label_divisor: panoptic label = semantic * label_divisor + instance.
      ignore_label: the void class.
    """
    self.is_thing = np.asarray(is_thing, bool)
    self.label_divisor = int(label_divisor)
    self.ignore_label = int(ignore_label)
    self.reset()

  def reset(self) -> None:
    """Forgets every image."""
    self.images: List[Dict[str, Any]] = []

  def update(self, gt_panoptic: npt.ArrayLike, pred_panoptic: npt.ArrayLike,
             pred_scores: Mapping[int, float]) -> None:
    """Adds one image.

    Args:
      gt_panoptic: int [H, W] ground-truth panoptic labels.
      pred_panoptic: int [H, W] predicted panoptic labels.
      pred_scores: the score of every predicted thing label present (panoptic
        label -> confidence).

    Raises:
      ValueError: on mismatched shapes or a thing label without a score.
    """
    gt = np.asarray(gt_panoptic).astype(np.int64, copy=False)
    pred = np.asarray(pred_panoptic).astype(np.int64, copy=False)
    if gt.shape != pred.shape or gt.ndim != 2:
      raise ValueError(f"InstanceAP.update: ground truth {gt.shape} and prediction "
                       f"{pred.shape} must both be [H, W].")
    record = self._gt_record(gt)
    ids, classes, wanted, rles = self._thing_segments(pred)
    missing = [int(ids[k]) for k in wanted if int(ids[k]) not in pred_scores]
    if missing:
      raise ValueError(f"InstanceAP.update: predicted thing labels {missing[:5]} "
                       "have no score.")
    record["pred"] = [(int(classes[k]), rle, float(pred_scores[int(ids[k])]))
                      for k, rle in zip(wanted, rles)]
    self.images.append(record)

  def update_instances(self, gt_panoptic: npt.ArrayLike, masks: npt.ArrayLike,
                       classes: npt.ArrayLike, scores: npt.ArrayLike,
                       image_id: Any = None) -> None:
    """Adds one image with overlapping instance masks.

    Args:
      gt_panoptic: int [H, W] ground-truth panoptic labels.
      masks: bool [H, W, K] instance masks (``common.INSTANCE_MASKS``).
      classes: int [K] train ids; instances with a class < 0 are skipped.
      scores: float [K].
      image_id: the image's id in :meth:`coco_results` (e.g. the COCO id from the
        file name); None: its position.

    Raises:
      ValueError: on mismatched shapes.
    """
    gt = np.asarray(gt_panoptic).astype(np.int64, copy=False)
    masks = np.asarray(masks)
    classes = np.asarray(classes, np.int64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if (gt.ndim != 2 or masks.shape[:2] != gt.shape or masks.ndim != 3
        or masks.shape[2] != classes.size or scores.size != classes.size):
      raise ValueError(f"InstanceAP.update_instances: ground truth {gt.shape}, masks "
                       f"{masks.shape}, classes {classes.shape} and scores {scores.shape} "
                       "must be [H, W], [H, W, K], [K], [K].")
    record = self._gt_record(gt)
    keep = np.flatnonzero(classes >= 0)
    rles = mask_utils.encode(np.asfortranarray(masks[:, :, keep].astype(np.uint8)))
    record["pred"] = [(int(classes[k]), rle, float(scores[k])) for k, rle in zip(keep, rles)]
    if image_id is not None:
      record["image_id"] = image_id
    self.images.append(record)

  def _thing_segments(self, labels: np.ndarray):
    """Ids, classes, thing-segment indices and their RLEs of a panoptic map."""
    ids, inverse, _ = panoptic_quality._index_labels(labels.reshape(-1))  # pylint: disable=protected-access
    inverse = inverse.reshape(labels.shape)
    classes = ids // self.label_divisor
    thing = np.zeros(ids.size, bool)
    known = (classes >= 0) & (classes < self.is_thing.size)
    thing[known] = self.is_thing[classes[known]]
    wanted = np.flatnonzero(thing)
    return ids, classes, wanted, _encode(inverse, wanted)

  def _gt_record(self, gt: np.ndarray) -> Dict[str, Any]:
    """An image's record with its ground-truth thing segments (class, RLE, crowd)."""
    ids, classes, wanted, rles = self._thing_segments(gt)
    return {"height": gt.shape[0], "width": gt.shape[1],
            "gt": [(int(classes[k]), rle, int(ids[k] % self.label_divisor == 0))
                   for k, rle in zip(wanted, rles)]}

  def coco_results(self, category_ids: Optional[Mapping[int, int]] = None,
                   given_image_ids: bool = True) -> List[Dict[str, Any]]:
    """The detections as a COCO results list (the content of a results JSON).

    Args:
      category_ids: train id -> the dataset's category id; None: the train id.
      given_image_ids: use the ``image_id`` given to :meth:`update_instances`
        where there is one; else (and False) the image's position (from 1).

    Returns:
      ``[{"image_id", "category_id", "segmentation": {"size", "counts": str},
      "score"}]``.
    """
    results = []
    for position, record in enumerate(self.images, start=1):
      image_id = record.get("image_id", position) if given_image_ids else position
      for cls, rle, score in record["pred"]:
        counts = rle["counts"]
        results.append({
            "image_id": image_id,
            "category_id": int(category_ids[cls]) if category_ids is not None else cls,
            "segmentation": {"size": list(rle["size"]),
                             "counts": counts.decode("ascii")
                                       if isinstance(counts, bytes) else counts},
            "score": score})
    return results

  def state(self) -> Dict[str, List[Dict[str, Any]]]:
    """``{"images": [...]}``: per-image RLE masks (merge by concatenation)."""
    return {"images": list(self.images)}

  def merge_state(self, state: Dict[str, List[Dict[str, Any]]]) -> "InstanceAP":
    """Appends another accumulator's images; returns self."""
    self.images.extend(state["images"])
    return self

  def merge(self, other: "InstanceAP") -> "InstanceAP":
    """Appends another accumulator's images; returns self."""
    if (other.label_divisor != self.label_divisor or
        not np.array_equal(other.is_thing, self.is_thing)):
      raise ValueError("InstanceAP.merge: the accumulators are configured differently.")
    return self.merge_state(other.state())

  def result(self, per_class: bool = False) -> Dict[str, Any]:
    """COCO mask AP of the thing classes.

    Args:
      per_class: also give ``"per_class"``: thing train id -> its AP@[.5:.95]
        (the mean of COCOeval's precision over IoU thresholds and recall points,
        all areas, 100 detections, as detectron2's per-category table), -1 for a
        class without ground truth.

    Returns:
      ``{"ap", "ap50", "ap75"}`` as fractions; -1 where COCO leaves them
      undefined (no ground-truth thing instance), 0 without any detection.
    """
    thing_ids = np.flatnonzero(self.is_thing).tolist()
    images, gt_anns = [], []
    # Scored with positions as image ids: given ids may repeat or mix types.
    for image_id, record in enumerate(self.images, start=1):
      images.append({"id": image_id, "height": record["height"], "width": record["width"]})
      for cls, rle, crowd in record["gt"]:
        gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": cls,
                        "segmentation": rle, "area": float(mask_utils.area(rle)),
                        "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": crowd})
    dt_anns = self.coco_results(given_image_ids=False)
    has_gt = any(not a["iscrowd"] for a in gt_anns)
    if not has_gt or not dt_anns:
      value = 0.0 if has_gt else -1.0
      result = {"ap": value, "ap50": value, "ap75": value}
      if per_class:
        with_gt = {a["category_id"] for a in gt_anns if not a["iscrowd"]}
        result["per_class"] = {c: (0.0 if c in with_gt else -1.0) for c in thing_ids}
      return result
    # pycocotools prints progress; keep the evaluation log clean.
    with contextlib.redirect_stdout(io.StringIO()):
      coco_gt = COCO()
      coco_gt.dataset = {"images": images, "annotations": gt_anns,
                         "categories": [{"id": c, "name": str(c)} for c in thing_ids]}
      coco_gt.createIndex()
      coco_dt = coco_gt.loadRes(dt_anns)
      evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    stats = evaluator.stats
    result = {"ap": float(stats[0]), "ap50": float(stats[1]), "ap75": float(stats[2])}
    if per_class:
      result["per_class"] = _per_class_ap(evaluator.eval["precision"], thing_ids)
    return result


def _per_class_ap(precision: np.ndarray, class_ids: Sequence[int]) -> Dict[int, float]:
  """AP@[.5:.95] per class from COCOeval's ``precision`` ``[T, R, K, A, M]``.

  ``K`` follows ``class_ids`` (COCOeval's ``catIds``); area "all" (A = 0) and the
  largest detection budget (M = -1). -1 marks undefined entries (no ground truth).
  """
  result = {}
  for k, class_id in enumerate(class_ids):
    values = precision[:, :, k, 0, -1]
    values = values[values > -1]
    result[int(class_id)] = float(values.mean()) if values.size else -1.0
  return result
