"""Benchmark: exact panoptic quality, coco_pq versus the official algorithm.

Part 1 (files). Generates N image pairs (default 500, 640x480, 20-40 segments
per ground-truth image, with crowd, VOID, shifted / relabelled / missing / extra
predicted segments) in COCO panoptic format, then times, each as a whole
process (interpreter start-up, imports, JSON and PNG decoding included):

* ``python -m deeplab_panoptic.evaluation.coco_pq`` (process pool over images);
* with ``--panopticapi_path=DIR`` (a checkout of
  https://github.com/cocodataset/panopticapi, never vendored here): the real
  ``panopticapi.evaluation.pq_compute`` with its default of one worker process
  per core (``multiprocessing.cpu_count()``), the same number of cores coco_pq
  uses;
* ``python benchmarks/pq_eval.py --official ...``: an independent
  re-implementation of panopticapi's ``pq_compute`` algorithm, single process
  (``pq_compute_single_core`` on all images, then ``pq_average``), written for
  this benchmark from the published algorithm, per image: PIL PNG read, rgb2id,
  np.unique of the predicted ids, np.unique of ``gt * 256**3 + pred``, and the
  per-segment Python loops of the official code.

Each writes its result JSON; the benchmark asserts coco_pq's equals the
re-implementation's exactly (float equality) and the real panopticapi's to
1e-12 (its workers add up their IoU sums in another order).

Part 2 (inside evaluation). The host-side cost of accumulating one image into
the evaluator's accumulators (PQ alone; PQ + mIoU; PQ + mIoU + AP masks) on
label maps with 20-40 segments, against the forward time of the quickstart
model (experiments/quickstart/kmax_deeplab_shapes.gin) for one image, measured
at 128x128 (the recipe's eval size) and 640x480.

Usage::

    python benchmarks/pq_eval.py                    # 500 images, full run
    python benchmarks/pq_eval.py --num_images=40    # quick run
    python benchmarks/pq_eval.py --files_only --panopticapi_path=/path/to/panopticapi
"""

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILE = os.path.join(REPO_ROOT, "experiments", "quickstart", "kmax_deeplab_shapes.gin")


# ============================================================================
# The official algorithm (panopticapi pq_compute, single process), re-implemented.
# ============================================================================
OFFSET = 256 * 256 * 256
VOID = 0


class OfficialPQStatCat:
  def __init__(self):
    self.iou = 0.0
    self.tp = 0
    self.fp = 0
    self.fn = 0


def official_rgb2id(color):
  color = color.astype(np.uint32)
  return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]


def official_single_core(pairs, gt_folder, pred_folder, categories):
  """Statistics over all image pairs, per category, the way the official code loops."""
  stats = {}

  def stat(cat):
    if cat not in stats:
      stats[cat] = OfficialPQStatCat()
    return stats[cat]

  for gt_ann, pred_ann in pairs:
    pan_gt = official_rgb2id(np.array(Image.open(os.path.join(gt_folder, gt_ann["file_name"])),
                                      dtype=np.uint32))
    pan_pred = official_rgb2id(np.array(
        Image.open(os.path.join(pred_folder, pred_ann["file_name"])), dtype=np.uint32))
    gt_segms = {el["id"]: el for el in gt_ann["segments_info"]}
    pred_segms = {el["id"]: el for el in pred_ann["segments_info"]}

    # Predicted areas and the official sanity checks.
    pred_labels_set = set(el["id"] for el in pred_ann["segments_info"])
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt):
      if label not in pred_segms:
        if label == VOID:
          continue
        raise KeyError(f"image {gt_ann['image_id']}: segment {label} in PNG, not in JSON")
      pred_segms[label]["area"] = label_cnt
      pred_labels_set.remove(label)
      if pred_segms[label]["category_id"] not in categories:
        raise KeyError(f"image {gt_ann['image_id']}: unknown category")
    if pred_labels_set:
      raise KeyError(f"image {gt_ann['image_id']}: segments {pred_labels_set} not in PNG")

    # Confusion between GT and predicted segments.
    pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt):
      gt_pred_map[(label // OFFSET, label % OFFSET)] = intersection

    # Matches.
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in gt_pred_map.items():
      if gt_label not in gt_segms or pred_label not in pred_segms:
        continue
      if gt_segms[gt_label]["iscrowd"] == 1:
        continue
      if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
        continue
      union = (pred_segms[pred_label]["area"] + gt_segms[gt_label]["area"] - intersection
               - gt_pred_map.get((VOID, pred_label), 0))
      iou = intersection / union
      if iou > 0.5:
        stat(gt_segms[gt_label]["category_id"]).tp += 1
        stat(gt_segms[gt_label]["category_id"]).iou += iou
        gt_matched.add(gt_label)
        pred_matched.add(pred_label)

    # False negatives; crowd regions per category (the last one wins).
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
      if gt_label in gt_matched:
        continue
      if gt_info["iscrowd"] == 1:
        crowd_labels_dict[gt_info["category_id"]] = gt_label
        continue
      stat(gt_info["category_id"]).fn += 1

    # False positives, unless mostly VOID or same-category crowd.
    for pred_label, pred_info in pred_segms.items():
      if pred_label in pred_matched:
        continue
      intersection = gt_pred_map.get((VOID, pred_label), 0)
      if pred_info["category_id"] in crowd_labels_dict:
        intersection += gt_pred_map.get((crowd_labels_dict[pred_info["category_id"]],
                                         pred_label), 0)
      if intersection / pred_info["area"] > 0.5:
        continue
      stat(pred_info["category_id"]).fp += 1
  return stats


def official_average(stats, categories, isthing):
  pq, sq, rq, n = 0, 0, 0, 0
  per_class = {}
  for label, label_info in categories.items():
    if isthing is not None and (label_info["isthing"] == 1) != isthing:
      continue
    s = stats.get(label, OfficialPQStatCat())
    iou, tp, fp, fn = s.iou, s.tp, s.fp, s.fn
    if tp + fp + fn == 0:
      per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
      continue
    n += 1
    pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
    sq_class = iou / tp if tp != 0 else 0
    rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
    per_class[label] = {"pq": pq_class, "sq": sq_class, "rq": rq_class}
    pq += pq_class
    sq += sq_class
    rq += rq_class
  return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def official_pq_compute(gt_json_file, pred_json_file, gt_folder, pred_folder):
  with open(gt_json_file) as f:
    gt_json = json.load(f)
  with open(pred_json_file) as f:
    pred_json = json.load(f)
  categories = {el["id"]: el for el in gt_json["categories"]}
  pred_annotations = {el["image_id"]: el for el in pred_json["annotations"]}
  pairs = []
  for gt_ann in gt_json["annotations"]:
    if gt_ann["image_id"] not in pred_annotations:
      raise Exception(f"no prediction for the image with id: {gt_ann['image_id']}")
    pairs.append((gt_ann, pred_annotations[gt_ann["image_id"]]))
  stats = official_single_core(pairs, gt_folder, pred_folder, categories)
  results = {}
  for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
    results[name], per_class = official_average(stats, categories, isthing)
    if name == "All":
      results["per_class"] = per_class
  return results


def real_pq_compute(panopticapi_path, gt_json_file, pred_json_file):
  """The real panopticapi ``pq_compute`` (one process per core), from a checkout."""
  sys.path.insert(0, os.path.abspath(panopticapi_path))
  from panopticapi.evaluation import pq_compute  # pylint: disable=g-import-not-at-top
  return pq_compute(gt_json_file, pred_json_file, gt_json_file[:-5], pred_json_file[:-5])


def per_image_cpu(workdir, panopticapi_path, num_images=100, repeats=3):
  """CPU ms per image, one process, best of ``repeats``, on the first images:
  the two PNG decodes alone, coco_pq, and the real panopticapi's per-core loop."""
  sys.path.insert(0, REPO_ROOT)
  sys.path.insert(0, os.path.abspath(panopticapi_path))
  from panopticapi.evaluation import pq_compute_single_core  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.evaluation import coco_pq  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "gt.json")) as f:
    gt = json.load(f)
  with open(os.path.join(workdir, "pred.json")) as f:
    preds = {a["image_id"]: a for a in json.load(f)["annotations"]}
  gt["annotations"] = gt["annotations"][:num_images]
  num_images = len(gt["annotations"])
  subset = os.path.join(workdir, "gt_subset.json")
  with open(subset, "w") as f:
    json.dump(gt, f)
  categories = {c["id"]: c for c in gt["categories"]}
  folders = {k: os.path.join(workdir, k) for k in ("gt", "pred")}

  def decode():
    for ann in gt["annotations"]:
      for folder in folders.values():
        Image.open(os.path.join(folder, ann["file_name"])).load()

  def panopticapi():
    pairs = [(a, json.loads(json.dumps(preds[a["image_id"]]))) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
      pq_compute_single_core(0, pairs, folders["gt"], folders["pred"], categories)

  def ours():
    coco_pq.pq_compute(subset, os.path.join(workdir, "pred.json"), folders["gt"],
                       folders["pred"], num_workers=1)

  best = {}
  for _ in range(repeats):
    for name, fn in (("PNG decodes (2 per image)", decode), ("coco_pq", ours),
                     ("panopticapi pq_compute_single_core", panopticapi)):
      start = time.process_time()
      fn()
      ms = 1e3 * (time.process_time() - start) / num_images
      best[name] = min(best.get(name, ms), ms)
  return best


def _assert_close(ours, theirs, path="result"):
  """Same keys, equal integers, floats equal to 1e-12."""
  if isinstance(ours, dict):
    assert set(ours) == set(theirs), f"{path}: keys differ"
    for key in ours:
      _assert_close(ours[key], theirs[key], f"{path}[{key!r}]")
  elif isinstance(ours, float) or isinstance(theirs, float):
    assert abs(ours - theirs) <= 1e-12, f"{path}: {ours} != {theirs}"
  else:
    assert ours == theirs, f"{path}: {ours} != {theirs}"


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(type(value))


# ============================================================================
# Generated data.
# ============================================================================
NUM_THINGS, NUM_STUFF = 80, 53


def make_categories():
  return [{"id": k + 1, "name": f"{'thing' if k < NUM_THINGS else 'stuff'}_{k}",
           "isthing": int(k < NUM_THINGS)} for k in range(NUM_THINGS + NUM_STUFF)]


def id2rgb(ids):
  ids = ids.astype(np.uint32)
  return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)


def _ellipse(height, width, rng):
  cy, cx = rng.uniform(0, height), rng.uniform(0, width)
  ry, rx = rng.uniform(0.03, 0.2) * height, rng.uniform(0.03, 0.2) * width
  y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, height))
  x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, width))
  yy, xx = np.mgrid[y0:y1, x0:x1]
  return (slice(y0, y1), slice(x0, x1)), ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def make_label_map(rng, height, width, num_segments):
  """Segment-id map [H, W] (0 = VOID) and [(id, category index, iscrowd)]."""
  ids = np.zeros((height, width), np.int64)
  used = set()
  segments = []

  def new_id():
    v = int(rng.integers(1, 1 << 24))
    while v in used:
      v = int(rng.integers(1, 1 << 24))
    used.add(v)
    return v

  num_stuff = int(rng.integers(3, 7))
  rows = np.sort(rng.choice(np.arange(1, height), num_stuff - 1, replace=False))
  for y0, y1 in zip([0, *rows], [*rows, height]):
    seg = new_id()
    ids[y0:y1] = seg
    segments.append((seg, NUM_THINGS + int(rng.integers(0, NUM_STUFF)), 0))
  for _ in range(num_segments - num_stuff):
    region, mask = _ellipse(height, width, rng)
    seg = new_id()
    ids[region][mask] = seg
    segments.append((seg, int(rng.integers(0, NUM_THINGS)), int(rng.random() < 0.05)))
  for _ in range(int(rng.integers(1, 4))):  # VOID blobs
    region, mask = _ellipse(height, width, rng)
    ids[region][mask] = 0
  present = set(np.unique(ids).tolist())
  return ids, [s for s in segments if s[0] in present]


def make_gt(rng, height, width, min_segments=20, max_segments=40):
  """A GT label map with min..max segments present (occlusion can hide some)."""
  while True:
    ids, segments = make_label_map(rng, height, width, int(rng.integers(22, 43)))
    if min_segments <= len(segments) <= max_segments:
      return ids, segments


def make_prediction(rng, gt_ids, gt_segments):
  height, width = gt_ids.shape
  ids = np.zeros_like(gt_ids)
  segments = []
  used = {s[0] for s in gt_segments}
  for seg, cat, _ in gt_segments:
    r = rng.random()
    if r < 0.08:
      continue  # missed: stays unlabelled
    new = int(rng.integers(1, 1 << 24))
    while new in used:
      new = int(rng.integers(1, 1 << 24))
    used.add(new)
    mask = gt_ids == seg
    if cat < NUM_THINGS and r < 0.6:
      mask = np.roll(mask, (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), (0, 1))
    if cat < NUM_THINGS and rng.random() < 0.1:
      cat = int(rng.integers(0, NUM_THINGS))
    ids[mask] = new
    segments.append((new, cat, 0))
  for _ in range(int(rng.integers(0, 6))):  # extra segments
    region, mask = _ellipse(height, width, rng)
    new = int(rng.integers(1, 1 << 24))
    while new in used:
      new = int(rng.integers(1, 1 << 24))
    used.add(new)
    ids[region][mask] = new
    segments.append((new, int(rng.integers(0, NUM_THINGS)), 0))
  present = set(np.unique(ids).tolist())
  return ids, [s for s in segments if s[0] in present]


def generate(folder, num_images, height, width, seed=0):
  rng = np.random.default_rng(seed)
  categories = make_categories()
  cat_ids = [c["id"] for c in categories]
  data = {"gt": [], "pred": []}
  counts = []
  for name in data:
    os.makedirs(os.path.join(folder, name), exist_ok=True)
  for i in range(num_images):
    gt_ids, gt_segments = make_gt(rng, height, width)
    counts.append(len(gt_segments))
    pred_ids, pred_segments = make_prediction(rng, gt_ids, gt_segments)
    file_name = f"{i:012d}.png"
    for name, ids, segments in (("gt", gt_ids, gt_segments), ("pred", pred_ids, pred_segments)):
      Image.fromarray(id2rgb(ids)).save(os.path.join(folder, name, file_name))
      areas = dict(zip(*np.unique(ids, return_counts=True)))
      info = [{"id": s, "category_id": cat_ids[c], "iscrowd": crowd, "area": int(areas[s])}
              for s, c, crowd in segments]
      data[name].append({"image_id": i, "file_name": file_name, "segments_info": info})
  for name, annotations in data.items():
    content = {"annotations": annotations}
    if name == "gt":
      content["categories"] = categories
    with open(os.path.join(folder, name + ".json"), "w") as f:
      json.dump(content, f)
  return counts


# ============================================================================
# Part 2: accumulation cost inside evaluation versus the model's forward time.
# ============================================================================
def forward_time(height, width, repeats, gin_file=GIN_FILE, gin_params=()):
  """Seconds per image of a model's forward pass (batch 1, tf.function).

  The model is the quickstart's unless ``gin_file`` / ``gin_params`` say otherwise.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, REPO_ROOT)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training import experiment  # pylint: disable=g-import-not-at-top
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)
  try:
    main_lib.parse_gin([gin_file], list(gin_params) + [
        f"InputConfig.crop_size=({height}, {width})",
        f"ExperimentConfig.eval_input_size=({height}, {width})"])
    exp = experiment.Experiment(tempfile.mkdtemp(), "summary")
  finally:
    os.chdir(cwd)
  forward = tf.function(lambda x: exp.model(x, training=False))
  post = tf.function(lambda x: exp.postprocessor(exp.model(x, training=False), (height, width)))
  image = tf.random.uniform([1, height, width, 3], -1, 1)
  timings = {}
  for name, fn in (("forward", forward), ("forward_postprocess", post)):
    fn(image)
    fn(image)  # warm-up (tracing)
    samples = []
    for _ in range(repeats):
      start = time.perf_counter()
      out = fn(image)
      tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
      samples.append(time.perf_counter() - start)
    timings[name] = float(np.median(samples))
  return timings


def accumulation_time(height, width, num_images, repeats=3):
  """Median seconds per image of the evaluator's host-side accumulation."""
  sys.path.insert(0, REPO_ROOT)
  from deeplab_panoptic.evaluation.metrics import PanopticMetrics  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.evaluation.panoptic_quality import PanopticQuality  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  div, ignore = 256, 255
  is_thing = [k < NUM_THINGS for k in range(NUM_THINGS + NUM_STUFF)]
  pairs = []
  for _ in range(num_images):
    gt_ids, gt_segments = make_gt(rng, height, width)
    pred_ids, pred_segments = make_prediction(rng, gt_ids, gt_segments)
    maps = []
    for ids, segments in ((gt_ids, gt_segments), (pred_ids, pred_segments)):
      labels = np.full(ids.shape, ignore * div, np.int32)
      for k, (seg, cat, crowd) in enumerate(segments):
        instance = 0 if (crowd or cat >= NUM_THINGS) else 1 + k % 100
        labels[ids == seg] = cat * div + instance
      maps.append(labels)
    scores = rng.random(128).astype(np.float32)
    pairs.append((maps[0], maps[1], maps[1] // div, scores))
  results = {}
  for name in ("PQ", "PQ + mIoU", "PQ + mIoU + AP masks"):
    samples = []
    for _ in range(repeats):
      if name == "PQ":
        acc = PanopticQuality(len(is_thing), is_thing, div, ignore)
        start = time.perf_counter()
        for gt, pred, _, _ in pairs:
          acc.update(gt, pred)
      else:
        acc = PanopticMetrics(len(is_thing), is_thing, div, ignore,
                              compute_ap=name.endswith("AP masks"))
        start = time.perf_counter()
        for gt, pred, sem, scores in pairs:
          acc.update(gt, pred, sem, scores)
      samples.append((time.perf_counter() - start) / len(pairs))
    results[name] = float(np.median(samples))
  return results


# ============================================================================
def _children_cpu():
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _timed(cmd):
  """Wall seconds of a whole process (and its CPU seconds, workers included)."""
  cpu = _children_cpu()
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  elapsed = time.perf_counter() - start
  _timed.cpu = _children_cpu() - cpu
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
  return elapsed, proc.stdout


def files_benchmark(workdir, panopticapi_path=None):
  """Part 1: times coco_pq, the real panopticapi (if a checkout is given) and the
  one-process re-implementation on the files in ``workdir``; prints the table."""
  gt_json, pred_json = os.path.join(workdir, "gt.json"), os.path.join(workdir, "pred.json")
  files = {"--gt_json": gt_json, "--pred_json": pred_json}
  runs = [("ours", f"coco_pq (whole process, {os.cpu_count()} cores)",
           ["-m", "deeplab_panoptic.evaluation.coco_pq"])]
  if panopticapi_path:
    runs.append(("real", f"panopticapi pq_compute ({os.cpu_count()} processes)",
                 [os.path.abspath(__file__), "--real",
                  f"--panopticapi_path={panopticapi_path}"]))
  runs.append(("official", "official algorithm re-implemented, one process",
               [os.path.abspath(__file__), "--official"]))
  load = " ".join(f"{v:.2f}" for v in os.getloadavg())
  timings, results, table = {}, {}, ""
  for key, _, cmd in runs:
    output = os.path.join(workdir, f"{key}_result.json")
    elapsed, stdout = _timed([sys.executable, *cmd, *(f"{k}={v}" for k, v in files.items()),
                              f"--output_json={output}"])
    timings[key] = (elapsed, _timed.cpu)
    table = stdout if key == "ours" else table
    with open(output) as f:
      results[key] = json.load(f)
  assert results["ours"] == results["official"], "coco_pq and the official algorithm disagree"
  if "real" in results:
    _assert_close(results["ours"], results["real"])
  print(table)
  print(f"load average before timing: {load}")
  for key, name, _ in runs:
    print(f"| {name} | {timings[key][0]:.2f} s | CPU {timings[key][1]:.2f} s |")
  for key, name, _ in runs[1:]:
    print(f"| speed-up of coco_pq over {name} | {timings[key][0] / timings['ours'][0]:.2f}x "
          f"| per CPU second {timings[key][1] / timings['ours'][1]:.2f}x |")
  print(f"identical results: yes (PQ {100 * results['ours']['All']['pq']:.4f})", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=500)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--workdir", default=None,
                      help="kept when given; pairs already generated there are reused")
  parser.add_argument("--skip_model", action="store_true", help="skip part 2's forward pass")
  parser.add_argument("--files_only", action="store_true", help="run part 1 only")
  parser.add_argument("--per_image_cpu", action="store_true",
                      help="with --panopticapi_path: also CPU ms per image in one process")
  parser.add_argument("--official", action="store_true",
                      help="internal: run the official algorithm on the files below")
  parser.add_argument("--panopticapi_path", default=None,
                      help="a checkout of cocodataset/panopticapi: also time its real "
                      "pq_compute (one process per core)")
  parser.add_argument("--real", action="store_true",
                      help="internal: run the real panopticapi on the files below")
  parser.add_argument("--forward", default=None, help="internal: time the forward at H,W")
  parser.add_argument("--model_gin_file", default=GIN_FILE,
                      help="gin file of the model whose forward time is the reference")
  parser.add_argument("--model_gin_param", action="append", default=[],
                      help="gin bindings for that model (repeatable)")
  parser.add_argument("--forward_repeats", type=int, default=20)
  parser.add_argument("--gt_json")
  parser.add_argument("--pred_json")
  parser.add_argument("--output_json")
  args = parser.parse_args()

  if args.official or args.real:
    result = (real_pq_compute(args.panopticapi_path, args.gt_json, args.pred_json)
              if args.real else
              official_pq_compute(args.gt_json, args.pred_json, args.gt_json[:-5],
                                  args.pred_json[:-5]))
    with open(args.output_json, "w") as f:
      json.dump(result, f, default=_json_default)
    return
  if args.forward:
    h, w = (int(v) for v in args.forward.split(","))
    print(json.dumps(forward_time(h, w, args.forward_repeats, args.model_gin_file,
                                  args.model_gin_param)))
    return

  workdir = args.workdir or tempfile.mkdtemp(prefix="pq_eval_")
  if os.path.exists(os.path.join(workdir, "gt.json")):
    print(f"reusing the pairs generated in {workdir}", flush=True)  # a re-timing
  else:
    start = time.perf_counter()
    counts = generate(workdir, args.num_images, args.height, args.width)
    print(f"generated {args.num_images} pairs {args.width}x{args.height} in "
          f"{time.perf_counter() - start:.1f} s; GT segments per image: min {min(counts)}, "
          f"mean {np.mean(counts):.1f}, max {max(counts)}", flush=True)
  files_benchmark(workdir, args.panopticapi_path)
  if args.per_image_cpu and args.panopticapi_path:
    for name, ms in per_image_cpu(workdir, args.panopticapi_path).items():
      print(f"| {name} | {ms:.2f} ms CPU per image (one process, best of 3) |", flush=True)

  rows = []
  for h, w in () if args.files_only else ((128, 128), (args.height, args.width)):
    acc = accumulation_time(h, w, num_images=20)
    fwd = None
    if not args.skip_model:
      _, out = _timed([sys.executable, os.path.abspath(__file__), f"--forward={h},{w}",
                       f"--model_gin_file={args.model_gin_file}",
                       f"--forward_repeats={args.forward_repeats}"]
                      + [f"--model_gin_param={p}" for p in args.model_gin_param])
      fwd = json.loads(out.strip().splitlines()[-1])
    for name, seconds in acc.items():
      row = f"| {w}x{h} | {name} | {1e3 * seconds:.2f} ms |"
      if fwd:
        row += (f" {1e3 * fwd['forward']:.1f} ms | {100 * seconds / fwd['forward']:.1f}% |"
                f" {1e3 * fwd['forward_postprocess']:.1f} ms |")
      rows.append(row)
      print(row, flush=True)
  if not args.workdir:
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
