"""Per-class results: AP per thing class (pycocotools) and the console table.

Per-class AP is checked against COCOeval run on one class at a time (a scene
whose other classes are removed scores that class alone) and against the
overall AP (COCO's AP is the mean over the classes with ground truth).
"""

import numpy as np
import pytest

from deeplab_panoptic.evaluation import instance_ap
from deeplab_panoptic.evaluation import tables

DIV, IGNORE = 100, 255
IS_THING = (True, True, False, False)   # 0 person, 1 car, 2 sky, 3 grass
NAMES = ("person", "car", "sky", "grass")


def _scenes():
  """Two images: persons found (one poorly), a car found once and missed once."""
  gt1 = np.full((24, 24), 2 * DIV)
  gt1[2:8, 2:8] = 0 * DIV + 1
  gt1[10:16, 10:18] = 1 * DIV + 2
  pred1 = gt1.copy()
  pred1[2:8, 2:5] = 2 * DIV                        # half the person: IoU 0.5
  pred1[18:22, 18:22] = 0 * DIV + 9                 # a false person
  scores1 = {1: 0.6, 102: 0.8, 9: 0.7}
  gt2 = np.full((24, 24), 3 * DIV)
  gt2[4:12, 4:12] = 0 * DIV + 3
  gt2[14:20, 2:20] = 1 * DIV + 4
  pred2 = gt2.copy()
  pred2[14:20, 2:20] = 3 * DIV                      # the car is missed
  scores2 = {3: 0.9}
  return [(gt1, pred1, scores1), (gt2, pred2, scores2)]


def _only(label_map, class_id, void):
  """The map with every segment of another class turned into ``void``."""
  out = label_map.copy()
  out[(label_map // DIV != class_id)] = void
  return out


def test_per_class_ap_equals_coco_eval_of_each_class_alone():
  full = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
  for gt, pred, scores in _scenes():
    full.update(gt, pred, scores)
  result = full.result(per_class=True)
  per_class = result["per_class"]
  assert sorted(per_class) == [0, 1]
  for class_id in (0, 1):
    alone = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
    for gt, pred, scores in _scenes():
      alone.update(_only(gt, class_id, 2 * DIV), _only(pred, class_id, 2 * DIV),
                   {k: v for k, v in scores.items() if k // DIV == class_id})
    assert per_class[class_id] == pytest.approx(alone.result()["ap"], abs=1e-12)
  assert 0 < per_class[1] < per_class[0] < 1
  assert result["ap"] == pytest.approx(np.mean(list(per_class.values())), abs=1e-12)
  assert full.result() == {k: result[k] for k in ("ap", "ap50", "ap75")}


def test_per_class_ap_without_detections_or_ground_truth():
  gt = np.full((8, 8), 2 * DIV)
  gt[:4, :4] = 0 * DIV + 1                          # a person, no car anywhere
  ap = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
  ap.update(gt, np.full_like(gt, 2 * DIV), {})
  assert ap.result(per_class=True)["per_class"] == {0: 0.0, 1: -1.0}


def test_per_class_table_by_hand():
  summary = {
      "per_class": {"person": {"PQ": 50.0, "SQ": 80.0, "RQ": 62.5},
                    "sky": {"PQ": 90.125, "SQ": 90.125, "RQ": 100.0}},
      "per_class_IoU": {"person": 70.0, "sky": 95.5, "grass": 0.0},
      "per_class_AP": tables.percent_by_name({0: 0.4, 1: -1.0}, NAMES),
  }
  assert summary["per_class_AP"] == {"person": 40.0}
  lines = tables.per_class_table(summary, NAMES, IS_THING).splitlines()
  assert lines[0].split() == ["id", "class", "kind", "|", "PQ", "SQ", "RQ", "|", "IoU",
                              "|", "AP"]
  assert set(lines[1]) == {"-"}
  rows = [line.split() for line in lines[2:]]
  assert rows == [
      ["0", "person", "thing", "|", "50.00", "80.00", "62.50", "|", "70.00", "|", "40.00"],
      ["1", "car", "thing", "|", "-", "-", "-", "|", "-", "|", "-"],
      ["2", "sky", "stuff", "|", "90.12", "90.12", "100.00", "|", "95.50", "|", "-"],
      ["3", "grass", "stuff", "|", "-", "-", "-", "|", "0.00", "|", "-"],
  ]
  # Only the metrics that were measured get columns; nothing measured, no table.
  only_iou = tables.per_class_table({"per_class_IoU": {"sky": 1.0}}, NAMES, IS_THING)
  assert only_iou.splitlines()[0].split()[-2:] == ["|", "IoU"]
  assert tables.per_class_table({"PQ": 1.0}, NAMES, IS_THING) is None
