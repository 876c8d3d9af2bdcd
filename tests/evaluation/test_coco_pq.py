"""Tests for coco_pq (panopticapi's pq_compute on COCO panoptic files)."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deeplab_panoptic.data import coco_panoptic
from deeplab_panoptic.evaluation import coco_pq
from tests.conftest import REPO_ROOT
from tests.evaluation import reference_pq


def _as_json(result):
  """The result as it reads back from a JSON file (category keys as strings)."""
  return json.loads(json.dumps(result))


@pytest.mark.parametrize("num_workers", [1, 2])
def test_generated_data_matches_reference_exactly(tmp_path, num_workers):
  paths = reference_pq.make_coco_dataset(str(tmp_path), num_images=12, seed=num_workers)
  gt_json, gt_dir, pred_json, pred_dir = paths
  ours = coco_pq.pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=num_workers)
  expected = reference_pq.reference_pq_compute(gt_json, gt_dir, pred_json, pred_dir)
  # Identical floats, not approximately equal: same matches, same summation order.
  assert ours == expected
  # Every kind of statistic occurs; the "never" class is absent from All.
  assert 0.0 < ours["All"]["pq"] < 1.0
  assert ours["All"]["n"] == 6 and ours["per_class"][30] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_hand_worked_image(tmp_path):
  # 4 x 10 image. GT: person A (cols 0-3), crowd person (cols 6-9, rows 0-1),
  # a second crowd person earlier in segments_info (row 3, cols 6-9), sky on
  # cols 4-5 rows 0-1, VOID elsewhere (rows 2-3 cols 0-5 and row 2 cols 6-9).
  gt = np.zeros((4, 10), np.int64)
  gt[:2, :4] = 1          # person A, area 8
  gt[:2, 4:6] = 5         # sky, area 4
  gt[:2, 6:] = 9          # crowd person (listed last: the crowd region)
  gt[3, 6:] = 8           # crowd person listed first: panopticapi forgets it
  gt_segments = [{"id": 8, "category_id": 3, "iscrowd": 1, "area": 4},
                 {"id": 1, "category_id": 3, "iscrowd": 0, "area": 8},
                 {"id": 5, "category_id": 20, "iscrowd": 0, "area": 4},
                 {"id": 9, "category_id": 3, "iscrowd": 1, "area": 8}]
  pred = np.zeros((4, 10), np.int64)
  pred[:3, :4] = 2        # person: 8 on A, 4 on VOID -> IoU 8 / (12 + 8 - 8 - 4) = 1
  pred[:2, 4:6] = 6       # sky exact
  pred[:2, 6:8] = 7       # person on the last crowd: ignored
  pred[3, 6:] = 4         # person on the forgotten crowd: a false positive
  pred[2, 8:] = 3         # car on void: ignored
  pred_segments = [{"id": 2, "category_id": 3}, {"id": 6, "category_id": 20},
                   {"id": 7, "category_id": 3}, {"id": 4, "category_id": 3},
                   {"id": 3, "category_id": 7}]
  gt_json, gt_dir = reference_pq.write_dataset(
      str(tmp_path), "gt", [(1, "a.png", gt, gt_segments)], reference_pq.CATEGORIES)
  pred_json, pred_dir = reference_pq.write_dataset(
      str(tmp_path), "pred", [(1, "a.png", pred, pred_segments)])
  result = coco_pq.pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=1)
  # person: TP 1 (IoU 1), FP 1 -> PQ 1 / 1.5; sky: PQ 1. Car: nothing counted.
  assert result["per_class"][3] == {"pq": 1 / 1.5, "sq": 1.0, "rq": 1 / 1.5}
  assert result["per_class"][20] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
  assert result["per_class"][7] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
  assert result["All"]["n"] == 2 and result["Things"]["n"] == 1
  assert result["All"]["pq"] == pytest.approx((1 / 1.5 + 1) / 2)
  assert result == reference_pq.reference_pq_compute(gt_json, gt_dir, pred_json, pred_dir)


def test_empty_prediction_and_empty_ground_truth(tmp_path):
  gt = np.zeros((5, 5), np.int64)
  gt_json, gt_dir = reference_pq.write_dataset(
      str(tmp_path), "gt", [(1, "a.png", gt, []), (2, "b.png", gt + 4, [
          {"id": 4, "category_id": 21, "iscrowd": 0, "area": 25}])], reference_pq.CATEGORIES)
  pred_json, pred_dir = reference_pq.write_dataset(
      str(tmp_path), "pred", [(1, "a.png", gt, []), (2, "b.png", gt, [])])
  result = coco_pq.pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=1)
  assert result["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}
  assert result["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def _coco_sample_files(sample_dir, tmp_path):
  with open(os.path.join(sample_dir, "panoptic_examples.json")) as f:
    gt_data = json.load(f)
  with open(os.path.join(sample_dir, "panoptic_coco_categories.json")) as f:
    gt_data["categories"] = json.load(f)
  gt_json = str(tmp_path / "gt.json")
  with open(gt_json, "w") as f:
    json.dump(gt_data, f)
  return gt_data, gt_json, os.path.join(sample_dir, "panoptic_examples")


def test_real_coco_sample(coco_sample_dir, tmp_path):
  gt_data, gt_json, gt_dir = _coco_sample_files(coco_sample_dir, tmp_path)
  rng = np.random.default_rng(0)
  items = []
  for ann in gt_data["annotations"]:
    gt_ids = reference_pq.rgb2id(os.path.join(gt_dir, ann["file_name"]))
    pred_ids, pred_segments = reference_pq.perturb(rng, gt_ids, ann["segments_info"],
                                                   gt_data["categories"])
    items.append((ann["image_id"], ann["file_name"], pred_ids, pred_segments))
  pred_json, pred_dir = reference_pq.write_dataset(str(tmp_path), "pred", items)
  ours = coco_pq.pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=1)
  assert ours == reference_pq.reference_pq_compute(gt_json, gt_dir, pred_json, pred_dir)
  assert 0.0 < ours["All"]["pq"] < 1.0
  # The ground truth against itself is perfect.
  perfect = coco_pq.pq_compute(gt_json, gt_json, gt_dir, gt_dir, num_workers=1)
  assert perfect["All"]["pq"] == 1.0 and perfect["All"]["n"] > 0


def test_cli_table_and_output_json(tmp_path):
  gt_json, gt_dir, pred_json, pred_dir = reference_pq.make_coco_dataset(str(tmp_path), 4)
  out = tmp_path / "out" / "pq.json"
  proc = subprocess.run(
      [sys.executable, "-m", "deeplab_panoptic.evaluation.coco_pq", f"--gt_json={gt_json}",
       f"--gt_folder={gt_dir}", f"--pred_json={pred_json}", f"--pred_folder={pred_dir}",
       f"--output_json={out}", "--per_class"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  with open(out) as f:
    written = json.load(f)
  expected = reference_pq.reference_pq_compute(gt_json, gt_dir, pred_json, pred_dir)
  assert written == _as_json(expected)
  for name in ("All", "Things", "Stuff"):
    line = next(l for l in proc.stdout.splitlines() if l.startswith(name))
    assert f"{100 * expected[name]['pq']:6.2f}" in line
  assert "person" in proc.stdout  # per-class table
  # Bad input: a clear message and exit status 1, no traceback.
  proc = subprocess.run(
      [sys.executable, "-m", "deeplab_panoptic.evaluation.coco_pq", f"--gt_json={gt_json}",
       f"--gt_folder={gt_dir}", f"--pred_json={gt_json}", f"--pred_folder={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 1
  assert "coco_pq: error:" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------
# Bad input: one clear error naming the file, the image and the segment.
# ----------------------------------------------------------------------------
def _bad_case(tmp_path, edit):
  gt = np.zeros((4, 6), np.int64)
  gt[:, :3] = 10
  gt[:, 3:] = 11
  gt_segments = [{"id": 10, "category_id": 3, "iscrowd": 0, "area": 12},
                 {"id": 11, "category_id": 20, "iscrowd": 0, "area": 12}]
  pred_items = [[5, "x.png", gt.copy(), copy.deepcopy(gt_segments)],
                [6, "y.png", gt.copy(), copy.deepcopy(gt_segments)]]
  gt_items = [(5, "x.png", gt, gt_segments), (6, "y.png", gt, gt_segments)]
  edit(pred_items)
  gt_json, gt_dir = reference_pq.write_dataset(str(tmp_path), "gt", gt_items,
                                               reference_pq.CATEGORIES)
  pred_json, pred_dir = reference_pq.write_dataset(
      str(tmp_path), "pred", [tuple(i) for i in pred_items])
  with pytest.raises(coco_pq.CocoPanopticFormatError) as info:
    coco_pq.pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=1)
  return str(info.value)


def test_error_missing_prediction(tmp_path):
  msg = _bad_case(tmp_path, lambda items: items.pop(1))
  assert "no prediction for image 6" in msg and "pred.json" in msg and "y.png" in msg


def test_error_png_segment_without_segments_info(tmp_path):
  def edit(items):
    items[1][2][0, 0] = 77
  msg = _bad_case(tmp_path, edit)
  assert "segment id 77" in msg and os.path.join("pred", "y.png") in msg
  assert "image 6" in msg and "segments_info" in msg


def test_error_segments_info_id_absent_from_png(tmp_path):
  def edit(items):
    items[0][3].append({"id": 99, "category_id": 7})
  msg = _bad_case(tmp_path, edit)
  assert "segment 99" in msg and "pred.json" in msg and "absent from the PNG" in msg
  assert "image 5" in msg


def test_error_unknown_category(tmp_path):
  def edit(items):
    items[1][3][0]["category_id"] = 1234
  msg = _bad_case(tmp_path, edit)
  assert "unknown category_id 1234" in msg and "segment 10" in msg and "pred.json" in msg


def test_error_duplicate_segment_id(tmp_path):
  def edit(items):
    items[0][3].append({"id": 11, "category_id": 21})
  msg = _bad_case(tmp_path, edit)
  assert "two predicted segments have the id 11" in msg and "image 5" in msg


def test_error_in_worker_process_propagates(tmp_path):
  gt_json, gt_dir, pred_json, pred_dir = reference_pq.make_coco_dataset(str(tmp_path), 6)
  with open(pred_json) as f:
    data = json.load(f)
  data["annotations"][4]["segments_info"][0]["category_id"] = 555
  with open(pred_json, "w") as f:
    json.dump(data, f)
  with pytest.raises(coco_pq.CocoPanopticFormatError, match="unknown category_id 555"):
    coco_pq.pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=2)


# ----------------------------------------------------------------------------
# The COCO panoptic writer.
# ----------------------------------------------------------------------------
def test_id_rgb_round_trip():
  ids = np.array([[0, 1, 255, 256], [65535, 65536, (1 << 24) - 1, 4260062]], np.uint32)
  rgb = coco_panoptic.id_to_rgb(ids)
  np.testing.assert_array_equal(rgb[1, 3], [4260062 % 256, 4260062 // 256 % 256,
                                            4260062 // 65536])
  np.testing.assert_array_equal(coco_panoptic.rgb_to_id(rgb), ids)


def test_writer_round_trip(tmp_path):
  div, ignore = 100, 255
  is_thing = [True, True, False]
  dataset_ids = {0: 0, 1: 17, 2: 5}   # a category id 0 must not collide with VOID
  rng = np.random.default_rng(3)
  panoptics = {}
  writer = coco_panoptic.CocoPanopticWriter(
      str(tmp_path / "predictions"), dataset_ids, div, ignore,
      categories=[{"id": v, "name": str(k), "isthing": int(is_thing[k])}
                  for k, v in dataset_ids.items()])
  for name, shape in (("000000000042.jpg", (20, 30)), ("frankfurt_01.png", (7, 9)),
                      ("empty.jpg", (5, 5))):
    pan = np.full(shape, 2 * div, np.int64)
    if name != "empty.jpg":
      for k in range(4):
        y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        pan[y:y + 3, x:x + 4] = int(rng.integers(0, 2)) * div + k + 1
      pan[0, :] = ignore * div + 3   # void, whatever its instance
    else:
      pan[:] = ignore * div
    panoptics[name] = pan
    writer.add(name, pan)
  with pytest.raises(ValueError, match="both map to"):
    writer.add("000000000042.png", panoptics["empty.jpg"])
  json_path = writer.close()
  with open(json_path) as f:
    data = json.load(f)
  assert not [p for p in os.listdir(tmp_path / "predictions") if p.startswith(".tmp")]
  assert [a["image_id"] for a in data["annotations"]] == [42, "frankfurt_01", "empty"]
  train_ids = {v: k for k, v in dataset_ids.items()}
  for ann, (name, pan) in zip(data["annotations"], panoptics.items()):
    ids = coco_panoptic.read_id_png(str(tmp_path / "predictions" / "panoptic" /
                                           ann["file_name"])).astype(np.int64)
    info = {s["id"]: s for s in ann["segments_info"]}
    # Every PNG id has a segments_info entry and vice versa; 0 is VOID.
    assert set(np.unique(ids).tolist()) - {0} == set(info)
    assert 0 not in info
    np.testing.assert_array_equal(ids == 0, pan // div == ignore)
    # One segment per label, the same pixels, the dataset's category ids, areas, boxes.
    labels = {int(l) for l in np.unique(pan) if l // div != ignore}
    assert len(labels) == len(info)
    for seg_id, seg in info.items():
      mask = ids == seg_id
      (label,) = np.unique(pan[mask])
      np.testing.assert_array_equal(mask, pan == label)
      assert train_ids[seg["category_id"]] == label // div
      assert seg["area"] == mask.sum() and seg["iscrowd"] == 0
      ys, xs = np.nonzero(mask)
      assert seg["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                             ys.max() - ys.min() + 1]
    # Back to this library's encoding: the same partition and classes.
    back = coco_panoptic.coco_to_panoptic(ids, ann["segments_info"], train_ids, is_thing,
                                          div, ignore)
    np.testing.assert_array_equal(back // div, np.where(pan // div == ignore, ignore,
                                                        pan // div))
    pairs = {(int(a), int(b)) for a, b in zip(back.ravel(), pan.ravel())}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_writer_output_is_accepted_by_coco_pq(tmp_path):
  div, ignore = 256, 255
  dataset_ids = {0: 3, 1: 20}
  categories = [{"id": 3, "name": "person", "isthing": 1},
                {"id": 20, "name": "sky", "isthing": 0}]
  pan = np.full((6, 8), 1 * div, np.int64)
  pan[1:4, 1:4] = 0 * div + 1
  pan[5, :] = ignore * div
  gt = coco_panoptic.CocoPanopticWriter(str(tmp_path / "gt"), dataset_ids, div, ignore,
                                        categories=categories)
  gt.add("1.jpg", pan)
  pred = coco_panoptic.CocoPanopticWriter(str(tmp_path / "pred"), dataset_ids, div, ignore)
  pred.add("1.jpg", pan)
  result = coco_pq.pq_compute(gt.close(), pred.close(), str(tmp_path / "gt" / "panoptic"),
                              str(tmp_path / "pred" / "panoptic"), num_workers=1)
  assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
