"""Independent references for the evaluator's mIoU and mask AP (tests only).

- ``numpy_miou``: a full confusion matrix built with ``np.add.at`` over
  (ground truth, prediction) pixel pairs, void kept as its own row and column.
- ``cocoeval_ap``: the segments written as COCO JSON files (RLE from
  ``pycocotools.mask.encode`` on boolean masks), read back by
  ``pycocotools.coco.COCO`` and scored by ``COCOeval`` -- the way a user would
  run pycocotools on the same masks, sharing no code with
  ``deeplab_panoptic.evaluation``.
"""

import contextlib
import io
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def numpy_miou(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray], num_classes: int,
               ignore_label: int) -> Tuple[float, np.ndarray, np.ndarray]:
  """mIoU over the classes present in the ground truth or the prediction.

  Args:
    gts: int [H, W] semantic ground truths (``ignore_label`` = void).
    preds: int [H, W] semantic predictions (``ignore_label`` = no class).
    num_classes: C.
    ignore_label: the void label.

  Returns:
    (mIoU fraction, per-class IoU float [C] with NaN for absent classes,
    confusion int64 [C + 1, C + 1]: row = GT, column = prediction, index C = void).
  """
  confusion = np.zeros((num_classes + 1, num_classes + 1), np.int64)
  for gt, pred in zip(gts, preds):
    g = np.where(gt.reshape(-1) == ignore_label, num_classes, gt.reshape(-1))
    p = np.where(pred.reshape(-1) == ignore_label, num_classes, pred.reshape(-1))
    np.add.at(confusion, (g, p), 1)
  labelled = confusion[:num_classes]  # void ground-truth pixels never count
  iou = np.full(num_classes, np.nan)
  for c in range(num_classes):
    tp = labelled[c, c]
    union = labelled[c].sum() + labelled[:, c].sum() - tp
    if union:
      iou[c] = tp / union
  return float(np.nanmean(iou)), iou, confusion


# One image: ground-truth segments (category, bool mask [H, W], iscrowd) and
# detections (category, bool mask [H, W], score).
GtSegments = List[Tuple[int, np.ndarray, int]]
Detections = List[Tuple[int, np.ndarray, float]]


def _rle(mask: np.ndarray) -> Dict:
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle["counts"] = rle["counts"].decode("ascii")  # JSON-serialisable
  return rle


def cocoeval_ap(images: Sequence[Tuple[GtSegments, Detections]], categories: Sequence[int],
                shape: Tuple[int, int], directory: str) -> np.ndarray:
  """COCOeval ``segm`` stats of detections against ground truth, via JSON files.

  Category ids are shifted by 1000 and image ids start at 7, so a match with the
  library cannot come from sharing its id conventions.

  Args:
    images: per image, (ground-truth segments, detections).
    categories: the category ids evaluated (a category with no ground truth
      is left out of the means by COCOeval).
    shape: (H, W) of every image.
    directory: where gt.json and dt.json are written.

  Returns:
    float [12] ``COCOeval.stats`` (AP, AP50, AP75, ... as fractions).
  """
  shift, first_image = 1000, 7
  gt = {"images": [], "annotations": [],
        "categories": [{"id": c + shift, "name": f"c{c}"} for c in categories]}
  detections = []
  for k, (segments, dets) in enumerate(images):
    image_id = first_image + k
    gt["images"].append({"id": image_id, "height": shape[0], "width": shape[1]})
    for category, mask, crowd in segments:
      rle = _rle(mask)
      gt["annotations"].append({
          "id": len(gt["annotations"]) + 1, "image_id": image_id,
          "category_id": category + shift, "segmentation": rle,
          "area": int(mask.sum()), "bbox": mask_utils.toBbox(rle).tolist(),
          "iscrowd": crowd})
    for category, mask, score in dets:
      detections.append({"image_id": image_id, "category_id": category + shift,
                         "segmentation": _rle(mask), "score": score})
  gt_path, dt_path = os.path.join(directory, "gt.json"), os.path.join(directory, "dt.json")
  for path, content in ((gt_path, gt), (dt_path, detections)):
    with open(path, "w", encoding="utf-8") as f:
      json.dump(content, f)
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO(gt_path)
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(dt_path), iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return np.asarray(evaluator.stats)


# ----------------------------------------------------------------------------
# A hand-made two-image scene (24 x 24) with every case the metrics must get
# right. Classes: 0 person, 1 car, 2 bike (things), 3 sky (stuff); 4 (stuff) is
# painted nowhere. Bike is only predicted. Crowd: a person region with instance
# 0. Void: ground-truth strips, and predicted void at labelled pixels.
# Each segment: (class, instance or prediction slot, rows, cols); later ones
# paint over earlier ones.
# ----------------------------------------------------------------------------
SCENE_SHAPE = (24, 24)
SCENE_NUM_SLOTS = 6
_VOID = -1
_GT_SEGMENTS = (
    ((3, 0, (0, 24), (0, 24)), (0, 1, (2, 10), (2, 8)), (0, 2, (14, 22), (3, 9)),
     (1, 1, (4, 10), (12, 22)), (0, 0, (14, 20), (14, 22)),
     (_VOID, 0, (0, 1), (0, 24)), (_VOID, 0, (0, 24), (23, 24))),
    ((3, 0, (0, 24), (0, 24)), (0, 3, (5, 15), (5, 12)), (1, 2, (14, 20), (14, 22)),
     (_VOID, 0, (0, 2), (0, 24))),
)
_PRED_SEGMENTS = (
    ((3, 0, (0, 24), (0, 24)),
     (0, 1, (2, 10), (2, 7)),      # person, IoU 40/48
     (0, 2, (15, 22), (3, 10)),    # person, IoU 42/55
     (0, 3, (0, 4), (16, 20)),     # person on sky: a false positive
     (1, 4, (5, 10), (12, 20)),    # car, IoU 40/60
     (0, 5, (15, 19), (15, 21)),   # person inside the crowd: ignored by AP
     (2, 6, (20, 23), (12, 14)),   # bike: a class only predicted
     (_VOID, 0, (11, 12), (0, 5))),
    ((3, 0, (0, 24), (0, 24)),
     (0, 1, (6, 16), (5, 12)),     # person, IoU 63/77
     (1, 2, (14, 20), (16, 24)),   # car, IoU 36/60
     (2, 3, (0, 3), (0, 3))),      # bike on ground-truth void
)


def _paint(segments, is_thing, label_divisor, ignore_label):
  labels = np.zeros(SCENE_SHAPE, np.int64)
  for cls, instance, (r0, r1), (c0, c1) in segments:
    if cls == _VOID:
      labels[r0:r1, c0:c1] = ignore_label * label_divisor
    else:
      labels[r0:r1, c0:c1] = cls * label_divisor + (instance if is_thing[cls] else 0)
  return labels


def hand_scene(is_thing: Sequence[bool], label_divisor: int, ignore_label: int,
               slot_scores: np.ndarray):
  """The scene as panoptic maps, with the AP reference's segments.

  Args:
    is_thing: per class (at least classes 0..3; 0, 1, 2 things, 3 stuff).
    label_divisor: panoptic label = class * label_divisor + instance.
    ignore_label: the void class.
    slot_scores: float [2, SCENE_NUM_SLOTS], the score of each prediction slot;
      thing slot k has instance id k + 1 (the postprocessors' convention).

  Returns:
    (gt int64 [2, 24, 24], pred int64 [2, 24, 24], AP images: per image
    (ground-truth thing segments, detections) for ``cocoeval_ap``).
  """
  gts, preds, ap_images = [], [], []
  for gt_spec, pred_spec, scores in zip(_GT_SEGMENTS, _PRED_SEGMENTS, slot_scores):
    gt = _paint(gt_spec, is_thing, label_divisor, ignore_label)
    pred = _paint(pred_spec, is_thing, label_divisor, ignore_label)
    segments = [(cls, gt == cls * label_divisor + inst, int(inst == 0))
                for cls, inst, _, _ in gt_spec if cls != _VOID and is_thing[cls]]
    dets = [(cls, pred == cls * label_divisor + slot, float(scores[slot - 1]))
            for cls, slot, _, _ in pred_spec if cls != _VOID and is_thing[cls]]
    gts.append(gt)
    preds.append(pred)
    ap_images.append(([s for s in segments if s[1].any()], [d for d in dets if d[1].any()]))
  return np.stack(gts), np.stack(preds), ap_images
