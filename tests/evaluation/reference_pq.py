"""Independent references for the evaluation tests (slow, loop-per-segment).

``reference_pq_compute`` follows panopticapi's single-process ``pq_compute``
statement by statement on boolean masks (no shared code with the library), and
accumulates in its order, so results can be compared for exact equality.
``make_coco_dataset`` writes generated COCO panoptic GT/prediction pairs.
"""

import json
import os
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image


def rgb2id(path: str) -> np.ndarray:
  color = np.array(Image.open(path), dtype=np.int64)
  return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
  ids = np.asarray(ids, np.int64)
  return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], -1).astype(np.uint8)


def reference_image_stats(gt_ids, gt_segments, pred_ids, pred_segments, stats) -> None:
  """Adds one image's statistics to ``stats`` ({category: [iou, tp, fp, fn]})."""
  gt_info = {s["id"]: dict(s) for s in gt_segments}
  pred_info = {s["id"]: dict(s) for s in pred_segments}
  for seg_id, info in pred_info.items():
    info["area"] = int(np.sum(pred_ids == seg_id))
  overlap = {}
  for g in np.unique(gt_ids).tolist():
    in_g = gt_ids == g
    for p in np.unique(pred_ids[in_g]).tolist():
      overlap[(g, p)] = int(np.sum(in_g & (pred_ids == p)))
  matched_gt, matched_pred = set(), set()
  for (g, p), inter in overlap.items():
    if g not in gt_info or p not in pred_info:
      continue
    if gt_info[g]["iscrowd"] == 1:
      continue
    if gt_info[g]["category_id"] != pred_info[p]["category_id"]:
      continue
    union = pred_info[p]["area"] + gt_info[g]["area"] - inter - overlap.get((0, p), 0)
    iou = inter / union
    if iou > 0.5:
      cat = gt_info[g]["category_id"]
      stats[cat][0] += iou
      stats[cat][1] += 1
      matched_gt.add(g)
      matched_pred.add(p)
  crowd_of_category = {}
  for g, info in gt_info.items():
    if g in matched_gt:
      continue
    if info["iscrowd"] == 1:
      crowd_of_category[info["category_id"]] = g
      continue
    stats[info["category_id"]][3] += 1
  for p, info in pred_info.items():
    if p in matched_pred:
      continue
    ignored = overlap.get((0, p), 0)
    if info["category_id"] in crowd_of_category:
      ignored += overlap.get((crowd_of_category[info["category_id"]], p), 0)
    if ignored / info["area"] > 0.5:
      continue
    stats[info["category_id"]][2] += 1


def reference_pq_compute(gt_json: str, gt_folder: str, pred_json: str, pred_folder: str
                         ) -> Dict[str, Any]:
  """panopticapi's result structure, computed with per-segment loops."""
  with open(gt_json) as f:
    gt_data = json.load(f)
  with open(pred_json) as f:
    pred_data = json.load(f)
  categories = {c["id"]: c for c in gt_data["categories"]}
  predictions = {a["image_id"]: a for a in pred_data["annotations"]}
  stats = {cat: [0.0, 0, 0, 0] for cat in categories}
  for gt_ann in gt_data["annotations"]:
    pred_ann = predictions[gt_ann["image_id"]]
    reference_image_stats(rgb2id(os.path.join(gt_folder, gt_ann["file_name"])),
                          gt_ann["segments_info"],
                          rgb2id(os.path.join(pred_folder, pred_ann["file_name"])),
                          pred_ann["segments_info"], stats)
  results = {}
  for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
    pq = sq = rq = 0
    n = 0
    per_class = {}
    for cat, info in categories.items():
      if isthing is not None and (info["isthing"] == 1) != isthing:
        continue
      iou, tp, fp, fn = stats[cat]
      if tp + fp + fn == 0:
        per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        continue
      n += 1
      per_class[cat] = {"pq": iou / (tp + 0.5 * fp + 0.5 * fn),
                        "sq": iou / tp if tp != 0 else 0,
                        "rq": tp / (tp + 0.5 * fp + 0.5 * fn)}
      pq += per_class[cat]["pq"]
      sq += per_class[cat]["sq"]
      rq += per_class[cat]["rq"]
    results[name] = ({"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n} if n
                     else {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0})
    if name == "All":
      results["per_class"] = per_class
  return results


CATEGORIES = [
    {"id": 3, "name": "person", "isthing": 1},
    {"id": 7, "name": "car", "isthing": 1},
    {"id": 11, "name": "dog", "isthing": 1},
    {"id": 20, "name": "sky", "isthing": 0},
    {"id": 21, "name": "grass", "isthing": 0},
    {"id": 22, "name": "road", "isthing": 0},
    {"id": 30, "name": "never", "isthing": 1},  # absent from GT and predictions
]


def _random_segments(rng, height, width, num_boxes, categories, crowd_rate):
  """A segment-id map made of overlapping boxes on stuff bands, and its segments_info."""
  stuff = [c["id"] for c in categories if not c["isthing"] and c["name"] != "never"]
  things = [c["id"] for c in categories if c["isthing"] and c["name"] != "never"]
  ids = np.zeros((height, width), np.int64)
  segments: List[Dict[str, Any]] = []
  used = set()

  def new_id():
    while True:
      v = int(rng.integers(1, 1 << 24))
      if v not in used:
        used.add(v)
        return v

  bands = np.sort(rng.choice(np.arange(1, height), size=2, replace=False))
  for k, (y0, y1) in enumerate(zip([0, *bands], [*bands, height])):
    seg = new_id()
    ids[y0:y1] = seg
    segments.append({"id": seg, "category_id": stuff[k % len(stuff)], "iscrowd": 0})
  for _ in range(num_boxes):
    h, w = int(rng.integers(3, height // 2)), int(rng.integers(3, width // 2))
    y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
    seg = new_id()
    ids[y:y + h, x:x + w] = seg
    segments.append({"id": seg, "category_id": int(rng.choice(things)),
                     "iscrowd": int(rng.random() < crowd_rate)})
  # Void blobs.
  for _ in range(2):
    h, w = int(rng.integers(2, height // 3)), int(rng.integers(2, width // 3))
    y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
    ids[y:y + h, x:x + w] = 0
  present = set(np.unique(ids).tolist())
  segments = [s for s in segments if s["id"] in present]
  for s in segments:
    s["area"] = int(np.sum(ids == s["id"]))
  return ids, segments


def perturb(rng, gt_ids, gt_segments, categories):
  """A prediction made from the GT: shifted, relabelled, merged, dropped and extra segments."""
  ids = gt_ids.copy()
  things = [c["id"] for c in categories if c["isthing"] and c["name"] != "never"]
  height, width = ids.shape
  segments = []
  for s in gt_segments:
    mask = gt_ids == s["id"]
    r = rng.random()
    cat = s["category_id"]
    if r < 0.1:
      ids[mask] = 0  # dropped: unlabelled
      continue
    if r < 0.3:
      shifted = np.roll(mask, int(rng.integers(1, max(2, height // 4))), axis=0)
      ids[mask & ~shifted] = 0
      ids[shifted] = s["id"]
    elif r < 0.4 and s["category_id"] in things:
      cat = int(rng.choice(things))
    segments.append({"id": s["id"], "category_id": cat, "iscrowd": 0})
  for _ in range(int(rng.integers(0, 4))):  # extra predictions, some over void / crowd
    h, w = int(rng.integers(2, height // 3)), int(rng.integers(2, width // 3))
    y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
    seg = int(rng.integers(1, 1 << 24))
    while seg in {s["id"] for s in gt_segments}:
      seg = int(rng.integers(1, 1 << 24))
    ids[y:y + h, x:x + w] = seg
    segments.append({"id": seg, "category_id": int(rng.choice(things)), "iscrowd": 0})
  present = set(np.unique(ids).tolist())
  return ids, [s for s in segments if s["id"] in present]


def write_dataset(folder: str, name: str, items: List[Tuple[int, str, np.ndarray, List]],
                  categories=None) -> Tuple[str, str]:
  """Writes PNGs + JSON; items are (image_id, file_name, ids, segments_info)."""
  png_dir = os.path.join(folder, name)
  os.makedirs(png_dir, exist_ok=True)
  annotations = []
  for image_id, file_name, ids, segments in items:
    Image.fromarray(id2rgb(ids)).save(os.path.join(png_dir, file_name))
    annotations.append({"image_id": image_id, "file_name": file_name,
                        "segments_info": segments})
  data = {"annotations": annotations}
  if categories is not None:
    data["categories"] = categories
  json_path = os.path.join(folder, name + ".json")
  with open(json_path, "w") as f:
    json.dump(data, f)
  return json_path, png_dir


def make_coco_dataset(folder: str, num_images: int = 8, seed: int = 0, height: int = 48,
                      width: int = 64) -> Tuple[str, str, str, str]:
  """Generated GT and prediction datasets; returns gt_json, gt_dir, pred_json, pred_dir."""
  rng = np.random.default_rng(seed)
  gt_items, pred_items = [], []
  for i in range(num_images):
    gt_ids, gt_segments = _random_segments(rng, height, width, int(rng.integers(2, 9)),
                                           CATEGORIES, crowd_rate=0.25)
    pred_ids, pred_segments = perturb(rng, gt_ids, gt_segments, CATEGORIES)
    if i == 0:  # an image whose prediction is entirely unlabelled
      pred_ids, pred_segments = np.zeros_like(gt_ids), []
    gt_items.append((100 + i, f"img_{i:03d}.png", gt_ids, gt_segments))
    pred_items.append((100 + i, f"img_{i:03d}.png", pred_ids, pred_segments))
  gt_json, gt_dir = write_dataset(folder, "gt", gt_items, CATEGORIES)
  pred_json, pred_dir = write_dataset(folder, "pred", pred_items)
  return gt_json, gt_dir, pred_json, pred_dir
