"""Exact, fast panoptic quality on COCO panoptic files (panopticapi's ``pq_compute``).

Usage::

    python -m deeplab_panoptic.evaluation.coco_pq \\
        --gt_json=panoptic_val2017.json --gt_folder=panoptic_val2017 \\
        --pred_json=predictions.json --pred_folder=predictions \\
        [--output_json=pq.json] [--num_workers=N] [--per_class]

Same inputs and same result as panopticapi's ``pq_compute`` run in one process:
``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id:
{"pq", "sq", "rq"}}}`` as fractions, bit for bit (matches are added in the
official order, see ``panoptic_quality``). Semantics, as the official code:

* GT pixels with id 0 are VOID: left out of the union of a match, and an
  unmatched prediction more than half on VOID plus the crowd region of its
  category is not a false positive (the crowd region of a category is its last
  ``iscrowd`` segment in segments_info order, as panopticapi keeps it).
* ``iscrowd`` GT segments are never matched and never false negatives.
* The GT area in a union is the JSON ``area`` (the PNG count where absent); the
  predicted area is the PNG count.
* Predictions for images absent from the GT are ignored.

Where panopticapi would silently accept inconsistent files, this tool stops with
one error naming the file, the image and the segment: a GT image without a
prediction, two predictions for one image, a segment id in a PNG without
segments_info, a segments_info id absent from its PNG, an unknown category id,
two segments with the same id, segment id 0 in segments_info, PNG sizes that
differ. (These checks cover the GT too; panopticapi checks only predictions.)

Speed: each image is two PNG decodes and a few O(pixels) numpy passes (a
lookup table from segment id to segment index, one bincount for the confusion
between segments) instead of panopticapi's two sorts; images are spread over a
process pool when there are enough of them.
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from deeplab_panoptic.data import coco_panoptic
from deeplab_panoptic.evaluation import panoptic_quality

# Images per worker task: large enough that pickling results is noise, small
# enough that the last tasks balance across workers.
_CHUNK_SIZE = 8
# Below this many images per worker a process pool costs more than it saves.
_MIN_IMAGES_PER_WORKER = 16


class CocoPanopticFormatError(ValueError):
  """Inconsistent COCO panoptic input (names the file, image and segment)."""


# Per-process state: the categories and folders of the current evaluation, and
# a segment id -> index lookup table over all 2**24 ids (reset after each image,
# so only ever the entries of one image are set).
_CONTEXT: Dict[str, Any] = {}
_LOOKUP: Optional[np.ndarray] = None


def _lookup_table() -> np.ndarray:
  global _LOOKUP
  if _LOOKUP is None:
    _LOOKUP = np.full(coco_panoptic.MAX_SEGMENT_ID + 1, -1, np.int32)
  return _LOOKUP


def _set_context(context: Dict[str, Any]) -> None:
  _CONTEXT.clear()
  _CONTEXT.update(context)


def _load_json(path: str, what: str) -> Dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CocoPanopticFormatError(f"Cannot read the {what} JSON {path}: {e}") from e
  if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
    raise CocoPanopticFormatError(f"{path}: the {what} JSON has no 'annotations' list.")
  return data


class _SegmentTable:
  """One image's segments_info, sorted by id, with VOID (id 0) as index 0."""

  def __init__(self, annotation: Dict[str, Any], json_path: str, png_path: str,
               what: str, class_of_category: Dict[int, int]):
    image = annotation.get("image_id")
    segments = annotation.get("segments_info")
    if not isinstance(segments, list):
      raise CocoPanopticFormatError(
          f"{json_path}: the {what} annotation of image {image} has no segments_info list.")
    seen = set()
    rows = []
    for seg in segments:
      try:
        seg_id, category = int(seg["id"]), int(seg["category_id"])
      except (KeyError, TypeError, ValueError) as e:
        raise CocoPanopticFormatError(
            f"{json_path}: image {image}: a {what} segment lacks a valid {e} "
            f"field: {seg}.") from e
      if seg_id in seen:
        raise CocoPanopticFormatError(
            f"{json_path}: image {image}: two {what} segments have the id {seg_id}.")
      seen.add(seg_id)
      if seg_id <= 0 or seg_id > coco_panoptic.MAX_SEGMENT_ID:
        raise CocoPanopticFormatError(
            f"{json_path}: image {image}: {what} segment id {seg_id} is not in "
            f"[1, {coco_panoptic.MAX_SEGMENT_ID}] (0 is VOID).")
      if category not in class_of_category:
        raise CocoPanopticFormatError(
            f"{json_path}: image {image}: {what} segment {seg_id} has the unknown "
            f"category_id {category}.")
      rows.append((seg_id, class_of_category[category], int(seg.get("iscrowd", 0)) == 1,
                   seg.get("area")))
    # panopticapi keeps, per category, the last crowd segment in segments_info
    # order (a dict overwritten in a loop); only that one excuses predictions.
    crowd_region_id = {cls: seg_id for seg_id, cls, crowd, _ in rows if crowd}
    rows.sort(key=lambda r: r[0])
    n = len(rows) + 1
    self.ids = np.zeros(n, np.int64)
    self.classes = np.zeros(n, np.int64)
    self.crowd = np.zeros(n, bool)
    self.json_area = np.full(n, -1, np.int64)
    for k, (seg_id, cls, crowd, area) in enumerate(rows, start=1):
      self.ids[k], self.classes[k], self.crowd[k] = seg_id, cls, crowd
      if area is not None:
        self.json_area[k] = int(area)
    self.crowd_region = np.isin(self.ids, list(crowd_region_id.values())) & self.crowd
    self.void = np.zeros(n, bool)
    self.void[0] = True
    self.json_path, self.png_path, self.what, self.image = json_path, png_path, what, image

  def index_map(self, segment_ids: np.ndarray) -> np.ndarray:
    """Segment index of every pixel, 0 for VOID.

    Args:
      segment_ids: uint32 [H, W] from the PNG.

    Returns:
      int32 [H * W].

    Raises:
      CocoPanopticFormatError: for an id in the PNG without segments_info.
    """
    lookup = _lookup_table()
    lookup[self.ids] = np.arange(self.ids.size, dtype=np.int32)
    try:
      index = lookup[segment_ids.reshape(-1)]
    finally:
      lookup[self.ids] = -1
    if index.min() < 0:
      unknown = np.unique(segment_ids.reshape(-1)[index < 0])
      raise CocoPanopticFormatError(
          f"{self.png_path}: image {self.image}: segment id {int(unknown[0])} "
          f"(RGB {tuple(int(v) for v in coco_panoptic.id_to_rgb(unknown[:1])[0])}) is in the "
          f"{self.what} PNG but not in the segments_info of {self.json_path}"
          + (f" ({unknown.size} such ids)." if unknown.size > 1 else "."))
    return index

  def check_areas(self, png_areas: np.ndarray) -> None:
    missing = np.flatnonzero((png_areas == 0) & ~self.void)
    if missing.size:
      raise CocoPanopticFormatError(
          f"{self.json_path}: image {self.image}: {self.what} segment "
          f"{int(self.ids[missing[0]])} is in segments_info but absent from the PNG "
          f"{self.png_path}.")


def image_statistics(gt_annotation: Dict[str, Any], pred_annotation: Dict[str, Any]
                     ) -> panoptic_quality.ImageStatistics:
  """panopticapi's per-image statistics for one (GT, prediction) pair.

  Needs the context set by :func:`_set_context` (done by :func:`pq_compute`).

  Args:
    gt_annotation: the GT JSON entry (``file_name``, ``segments_info``).
    pred_annotation: the prediction JSON entry.

  Returns:
    Counts per category index and the matches in panopticapi's order.
  """
  ctx = _CONTEXT
  gt_png = os.path.join(ctx["gt_folder"], gt_annotation["file_name"])
  pred_png = os.path.join(ctx["pred_folder"], pred_annotation["file_name"])
  gt = _SegmentTable(gt_annotation, ctx["gt_json"], gt_png, "ground-truth",
                     ctx["class_of_category"])
  pred = _SegmentTable(pred_annotation, ctx["pred_json"], pred_png, "predicted",
                       ctx["class_of_category"])
  try:
    gt_ids = coco_panoptic.read_id_png(gt_png)
    pred_ids = coco_panoptic.read_id_png(pred_png)
  except ValueError as e:
    raise CocoPanopticFormatError(f"Image {gt.image}: {e}") from e
  if gt_ids.shape != pred_ids.shape:
    raise CocoPanopticFormatError(
        f"Image {gt.image}: the ground truth {gt_png} is {gt_ids.shape[1]}x"
        f"{gt_ids.shape[0]} but the prediction {pred_png} is {pred_ids.shape[1]}x"
        f"{pred_ids.shape[0]} pixels.")
  gt_index = gt.index_map(gt_ids)
  pred_index = pred.index_map(pred_ids)
  num_gt, num_pred = gt.ids.size, pred.ids.size
  # int32 arithmetic (half the memory traffic of int64) while the key fits.
  key_dtype = np.int32 if num_gt * num_pred < 2**31 else np.int64
  key = gt_index.astype(key_dtype, copy=False) * key_dtype(num_pred)
  key += pred_index
  counts = np.bincount(key, minlength=num_gt * num_pred)
  matrix = counts.reshape(num_gt, num_pred)
  pred_area = matrix.sum(axis=0)
  gt_png_area = matrix.sum(axis=1)
  pred.check_areas(pred_area)
  gt.check_areas(gt_png_area)
  gt_area = np.where(gt.json_area >= 0, gt.json_area, gt_png_area)
  pairs = np.flatnonzero(counts)
  return panoptic_quality.segment_statistics(
      pairs // num_pred, pairs % num_pred, counts[pairs].astype(np.int64),
      gt.classes, gt_area, gt.void, gt.crowd, gt.crowd_region,
      pred.classes, pred_area.astype(np.int64), pred.void, ctx["num_classes"])


def _image_task(task: Tuple[Dict[str, Any], Dict[str, Any]]
                ) -> panoptic_quality.ImageStatistics:
  return image_statistics(*task)


def _pair_annotations(gt_data: Dict[str, Any], pred_data: Dict[str, Any],
                      gt_json: str, pred_json: str
                      ) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
  """(GT, prediction) annotation pairs in GT order."""
  predictions: Dict[Any, Dict[str, Any]] = {}
  for ann in pred_data["annotations"]:
    image_id = ann.get("image_id")
    if image_id in predictions:
      raise CocoPanopticFormatError(
          f"{pred_json}: two prediction annotations for image {image_id} "
          f"({predictions[image_id].get('file_name')} and {ann.get('file_name')}).")
    if "file_name" not in ann:
      raise CocoPanopticFormatError(
          f"{pred_json}: the prediction annotation of image {image_id} has no file_name.")
    predictions[image_id] = ann
  pairs = []
  for ann in gt_data["annotations"]:
    image_id = ann.get("image_id")
    if image_id not in predictions:
      raise CocoPanopticFormatError(
          f"{pred_json}: no prediction for image {image_id} (ground truth "
          f"{ann.get('file_name')} in {gt_json}).")
    pairs.append((ann, predictions[image_id]))
  return pairs


def _default_workers() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: Optional[str] = None,
               pred_folder: Optional[str] = None, num_workers: Optional[int] = None
               ) -> Dict[str, Any]:
  """Panoptic quality of COCO panoptic predictions, as panopticapi's ``pq_compute``.

  Args:
    gt_json_file: GT JSON with ``annotations`` and ``categories``.
    pred_json_file: prediction JSON with ``annotations``.
    gt_folder: GT PNG folder (default: the JSON path without ``.json``).
    pred_folder: prediction PNG folder (default: likewise).
    num_workers: processes; None picks the available cores when there are at
      least 16 images per worker, 0 or 1 runs in this process.

  Returns:
    ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class":
    {category_id: {"pq", "sq", "rq"}}}`` (fractions).

  Raises:
    CocoPanopticFormatError: on inconsistent input, naming file, image and segment.
  """
  gt_folder = gt_folder or gt_json_file.replace(".json", "")
  pred_folder = pred_folder or pred_json_file.replace(".json", "")
  for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
    if not os.path.isdir(folder):
      raise CocoPanopticFormatError(f"The {what} PNG folder {folder} does not exist.")
  gt_data = _load_json(gt_json_file, "ground-truth")
  pred_data = _load_json(pred_json_file, "prediction")
  categories = gt_data.get("categories")
  if not isinstance(categories, list) or not categories:
    raise CocoPanopticFormatError(f"{gt_json_file}: no 'categories' list.")
  category_ids = [int(c["id"]) for c in categories]
  if len(set(category_ids)) != len(category_ids):
    raise CocoPanopticFormatError(f"{gt_json_file}: repeated category ids.")
  is_thing = [c.get("isthing") == 1 for c in categories]
  pairs = _pair_annotations(gt_data, pred_data, gt_json_file, pred_json_file)

  context = {"gt_json": gt_json_file, "pred_json": pred_json_file,
             "gt_folder": gt_folder, "pred_folder": pred_folder,
             "class_of_category": {cat: k for k, cat in enumerate(category_ids)},
             "num_classes": len(category_ids)}
  if num_workers is None:
    num_workers = min(_default_workers(), len(pairs) // _MIN_IMAGES_PER_WORKER)
  accumulator = panoptic_quality.PanopticQuality(
      len(category_ids), is_thing, label_divisor=1 << 24,
      ignore_label=max(len(category_ids), 255))
  if num_workers <= 1:
    _set_context(context)
    for pair in pairs:
      accumulator.add_statistics(_image_task(pair))
  else:
    methods = multiprocessing.get_all_start_methods()
    mp = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with mp.Pool(num_workers, initializer=_set_context, initargs=(context,)) as pool:
      # imap keeps GT order, so the IoUs add up in panopticapi's order.
      for stats in pool.imap(_image_task, pairs, chunksize=_CHUNK_SIZE):
        accumulator.add_statistics(stats)
  result = accumulator.result()
  result["per_class"] = {category_ids[k]: v for k, v in result["per_class"].items()}
  return result


def format_table(result: Dict[str, Any], categories: Optional[Sequence[Dict]] = None,
                 per_class: bool = False) -> str:
  """The result as a text table in percent (panopticapi's console layout)."""
  lines = [f"{'':<10s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>5s}", "-" * 38]
  for name in ("All", "Things", "Stuff"):
    r = result[name]
    lines.append(f"{name:<10s}| {100 * r['pq']:6.2f} {100 * r['sq']:6.2f} "
                 f"{100 * r['rq']:6.2f} {r['n']:5d}")
  if per_class:
    names = {int(c["id"]): c.get("name", "") for c in categories or []}
    lines += ["", f"{'id':>5s} {'category':<24s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s}", "-" * 52]
    for cat, r in result["per_class"].items():
      lines.append(f"{cat:>5d} {names.get(cat, '')[:24]:<24s}| {100 * r['pq']:6.2f} "
                   f"{100 * r['sq']:6.2f} {100 * r['rq']:6.2f}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m deeplab_panoptic.evaluation.coco_pq",
      description="Panoptic quality of COCO panoptic predictions (panopticapi's pq_compute).")
  parser.add_argument("--gt_json", required=True, help="ground-truth JSON (with categories)")
  parser.add_argument("--gt_folder", default=None, help="ground-truth PNG folder")
  parser.add_argument("--pred_json", required=True, help="prediction JSON")
  parser.add_argument("--pred_folder", default=None, help="prediction PNG folder")
  parser.add_argument("--output_json", default=None,
                      help="write the result structure here (fractions)")
  parser.add_argument("--num_workers", type=int, default=None,
                      help="processes (default: available cores when it pays; 1: none)")
  parser.add_argument("--per_class", action="store_true", help="also print per-class PQ")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  try:
    result = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                        num_workers=args.num_workers)
    categories = None
    if args.per_class:
      categories = _load_json(args.gt_json, "ground-truth").get("categories")
    if args.output_json:
      coco_panoptic.write_json(args.output_json, result)
  except CocoPanopticFormatError as e:
    print(f"coco_pq: error: {e}", file=sys.stderr)
    return 1
  print(format_table(result, categories, args.per_class))
  print(f"Time elapsed: {time.perf_counter() - start:.2f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
