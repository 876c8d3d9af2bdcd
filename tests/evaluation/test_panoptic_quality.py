"""Tests for exact panoptic quality (panopticapi semantics)."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from deeplab_panoptic.evaluation import panoptic_quality
from tests.conftest import COCO_SAMPLE_DIR

# Classes: 0 person (thing), 1 car (thing), 2 sky (stuff), 3 grass (stuff).
IS_THING = (True, True, False, False)
DIV = 1000
IGNORE = 255
VOID = IGNORE * DIV


def _pq():
  return panoptic_quality.PanopticQuality(num_classes=4, is_thing=IS_THING,
                                          label_divisor=DIV, ignore_label=IGNORE)


def _pan(cls, inst=0):
  return cls * DIV + inst


def _image(shape=(10, 10), fill=VOID):
  return np.full(shape, fill, np.int64)


def test_perfect_prediction():
  gt = _image(fill=_pan(2))
  gt[5:, :] = _pan(3)
  gt[1:4, 1:4] = _pan(0, 1)
  gt[6:9, 6:9] = _pan(0, 2)
  gt[0, 9] = VOID
  pq = _pq()
  pq.update(gt, gt.copy())
  res = pq.result()
  assert res["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}
  assert res["Things"]["n"] == 1 and res["Stuff"]["n"] == 2
  assert res["per_class"][0] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
  assert res["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # absent
  np.testing.assert_array_equal(pq.tp, [2, 0, 1, 1])
  np.testing.assert_array_equal(pq.fp + pq.fn, [0, 0, 0, 0])


def test_known_iou_with_void_removed_from_union():
  gt = _image()
  gt[0, :8] = _pan(0, 1)           # GT person: 8 pixels
  pred = _image()
  pred[0, 2:10] = _pan(0, 7)       # 6 on the person, 2 on GT void
  pq = _pq()
  pq.update(gt, pred)
  # union = pred 8 + gt 8 - inter 6 - pred∩void 2 = 8.
  assert pq.tp[0] == 1 and pq.fp[0] == 0 and pq.fn[0] == 0
  assert pq.iou_sum[0] == pytest.approx(6 / 8)
  res = pq.result()
  assert res["All"]["pq"] == pytest.approx(0.75)
  assert res["All"]["n"] == 1 and res["Stuff"]["n"] == 0


def test_iou_exactly_half_is_not_a_match():
  gt = _image()
  gt[0, :4] = _pan(0, 1)
  pred = _image(fill=_pan(2))
  pred[0, :2] = _pan(0, 1)         # inter 2, union 2 + 4 - 2 = 4: IoU 0.5
  gt_rest = gt.copy()
  gt_rest[gt_rest == VOID] = _pan(2)
  pq = _pq()
  pq.update(gt_rest, pred)
  assert pq.tp[0] == 0 and pq.fn[0] == 1 and pq.fp[0] == 1


def test_unmatched_prediction_is_false_positive():
  gt = _image(fill=_pan(2))
  pred = gt.copy()
  pred[:2, :2] = _pan(1, 3)        # a car where the GT has sky
  pq = _pq()
  pq.update(gt, pred)
  np.testing.assert_array_equal(pq.tp, [0, 0, 1, 0])
  np.testing.assert_array_equal(pq.fp, [0, 1, 0, 0])
  np.testing.assert_array_equal(pq.fn, [0, 0, 0, 0])
  res = pq.result()
  assert res["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
  assert res["per_class"][2]["pq"] == pytest.approx(96 / 100)
  assert res["All"]["n"] == 2
  assert res["All"]["pq"] == pytest.approx(0.48)
  assert res["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}


def test_prediction_mostly_on_void_is_not_false_positive():
  gt = _image(fill=_pan(2))
  gt[:, 5:] = VOID
  pred = gt.copy()
  pred[0, 3:10] = _pan(1, 1)       # 2 on sky, 5 on void: 5/7 > 0.5, ignored
  pred[9, 2:8] = _pan(0, 1)        # 3 on sky, 3 on void: exactly 0.5, counted
  pq = _pq()
  pq.update(gt, pred)
  np.testing.assert_array_equal(pq.fp, [1, 0, 0, 0])
  assert pq.tp[2] == 1


def test_crowd_handling():
  gt = _image(fill=_pan(3))
  gt[:4, :] = _pan(0, 0)           # person crowd (thing, instance 0)
  gt[6:, 6:] = _pan(0, 1)          # a person
  pred = gt.copy()
  pred[:4, :] = _pan(3)            # crowd predicted as grass, except:
  pred[:4, :4] = _pan(0, 2)        # a person lying on the crowd: not FP
  pred[:2, 6:] = _pan(1, 5)        # a car on the person crowd: FP (other class)
  pq = _pq()
  pq.update(gt, pred)
  # The crowd is never a FN and never matched. The person on it is ignored; the
  # car on it is a FP. Grass: GT 44 px, predicted 44 + 16 on the crowd, so IoU
  # 44 / 60 (crowd pixels stay in the union, unlike void).
  np.testing.assert_array_equal(pq.tp, [1, 0, 0, 1])
  np.testing.assert_array_equal(pq.fn, [0, 0, 0, 0])
  np.testing.assert_array_equal(pq.fp, [0, 1, 0, 0])
  assert pq.iou_sum[3] == pytest.approx(44 / 60)
  assert pq.iou_sum[0] == pytest.approx(1.0)


def test_crowd_exact_prediction_not_counted():
  gt = _image(fill=_pan(2))
  gt[:3, :3] = _pan(0, 0)          # crowd only
  pq = _pq()
  pq.update(gt, gt.copy())         # prediction: person segment exactly on the crowd
  np.testing.assert_array_equal(pq.tp, [0, 0, 1, 0])
  np.testing.assert_array_equal(pq.fp, [0, 0, 0, 0])
  np.testing.assert_array_equal(pq.fn, [0, 0, 0, 0])
  assert pq.result()["All"]["n"] == 1


def test_empty_images():
  pq = _pq()
  pq.update(_image(), _image())
  pq.update(np.zeros((0, 5, 5), np.int64), np.zeros((0, 5, 5), np.int64))
  res = pq.result()
  for group in ("All", "Things", "Stuff"):
    assert res[group] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
  # GT present, prediction all void: false negatives only.
  gt = _image(fill=_pan(2))
  gt[:2, :2] = _pan(1, 4)
  pq.update(gt, _image())
  np.testing.assert_array_equal(pq.fn, [0, 1, 1, 0])
  res = pq.result()
  assert res["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}


def test_void_class_prediction_ids_are_ignored():
  gt = _image(fill=_pan(2))
  pred = gt.copy()
  pred[:2, :] = IGNORE * DIV + 3   # void class with a stray instance id
  pq = _pq()
  pq.update(gt, pred)
  np.testing.assert_array_equal(pq.fp, [0, 0, 0, 0])
  assert pq.iou_sum[2] == pytest.approx(0.8)


def test_batch_merge_and_crop():
  rng = np.random.default_rng(0)
  gts, preds = [], []
  for _ in range(3):
    gt = _image((12, 12), fill=_pan(2))
    gt[6:, :] = _pan(3)
    for k in range(3):
      y, x = rng.integers(0, 9, size=2)
      gt[y:y + 3, x:x + 3] = _pan(int(rng.integers(0, 2)), k + 1)
    pred = np.roll(gt, int(rng.integers(-1, 2)), axis=1)
    gts.append(gt)
    preds.append(pred)
  whole = _pq()
  for g, p in zip(gts, preds):
    whole.update(g, p)
  batched = _pq()
  batched.update(np.stack(gts[:2]), np.stack(preds[:2]))
  other = _pq()
  other.update(gts[2], preds[2])
  batched.merge(other)
  for name in ("iou_sum", "tp", "fp", "fn"):
    np.testing.assert_allclose(getattr(batched, name), getattr(whole, name))
  assert batched.result() == whole.result()
  # Plain-array state sums the same way (e.g. across hosts).
  first, second = _pq(), _pq()
  first.update(np.stack(gts[:2]), np.stack(preds[:2]))
  second.update(gts[2], preds[2])
  summed = {k: v + second.state()[k] for k, v in first.state().items()}
  assert _pq().merge_state(summed).result() == whole.result()

  # Padding outside image_sizes is left out, as if cropped.
  cropped = _pq()
  for g, p in zip(gts, preds):
    cropped.update(g[:9, :10], p[:9, :10])
  padded = _pq()
  pad_g = np.stack(gts)
  pad_p = np.stack(preds)
  padded.update(pad_g, pad_p, image_sizes=np.array([[9, 10]] * 3))
  assert padded.result() == cropped.result()


def test_rejects_bad_input():
  pq = _pq()
  with pytest.raises(ValueError, match="class"):
    pq.update(_image(fill=_pan(7)), _image())
  with pytest.raises(ValueError, match="shape|\\[H, W\\]"):
    pq.update(_image((3, 3)), _image((3, 4)))
  with pytest.raises(ValueError, match="configured"):
    pq.merge(panoptic_quality.PanopticQuality(4, IS_THING, DIV + 1, IGNORE))


# ----------------------------------------------------------------------------
# Cross-check on real COCO panoptic annotations against an independent,
# loop-over-segments re-implementation of panopticapi's per-image algorithm.
# ----------------------------------------------------------------------------
_SAMPLE = COCO_SAMPLE_DIR
_COCO_DIV = 256
_COCO_IGNORE = 255


def _rgb_to_id(rgb):
  rgb = rgb.astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _id_to_rgb(ids):
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def _panopticapi_reference(gt_ids, gt_segments, pred_ids, pred_segments, categories):
  """Per-image statistics as panopticapi's pq_compute_single_core defines them.

  Works on segment-id maps (0 = VOID) and segments_info lists, category ids as
  in the COCO files. Returns {category_id: [iou, tp, fp, fn]}.
  """
  stats = {cat: [0.0, 0, 0, 0] for cat in categories}
  gt_info = {s["id"]: dict(s) for s in gt_segments}
  pred_info = {s["id"]: dict(s) for s in pred_segments}
  for seg_id, info in pred_info.items():
    info["area"] = int(np.sum(pred_ids == seg_id))
    assert info["area"] > 0
  overlap = {}
  for g in np.unique(gt_ids):
    in_g = gt_ids == g
    for p in np.unique(pred_ids[in_g]):
      overlap[(int(g), int(p))] = int(np.sum(in_g & (pred_ids == p)))
  matched_gt, matched_pred = set(), set()
  for (g, p), inter in overlap.items():
    if g not in gt_info or p not in pred_info:
      continue
    if gt_info[g]["iscrowd"] == 1:
      continue
    if gt_info[g]["category_id"] != pred_info[p]["category_id"]:
      continue
    union = pred_info[p]["area"] + gt_info[g]["area"] - inter - overlap.get((0, p), 0)
    if inter / union > 0.5:
      cat = gt_info[g]["category_id"]
      stats[cat][0] += inter / union
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
  return stats


def _reference_average(stats, categories, isthing):
  pq = sq = rq = 0.0
  n = 0
  per_class = {}
  for cat, info in categories.items():
    if isthing is not None and bool(info["isthing"]) != isthing:
      continue
    iou, tp, fp, fn = stats[cat]
    if tp + fp + fn == 0:
      per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
      continue
    n += 1
    per_class[cat] = {"pq": iou / (tp + 0.5 * fp + 0.5 * fn),
                      "sq": iou / tp if tp else 0.0,
                      "rq": tp / (tp + 0.5 * fp + 0.5 * fn)}
    pq += per_class[cat]["pq"]
    sq += per_class[cat]["sq"]
    rq += per_class[cat]["rq"]
  return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def _to_our_encoding(ids, segments, train_id):
  """COCO segment-id map -> semantic * 256 + instance (crowd and stuff: 0)."""
  pan = np.full(ids.shape, _COCO_IGNORE * _COCO_DIV, np.int64)
  next_instance = {}
  for seg in segments:
    cls = train_id[seg["category_id"]]
    instance = 0
    if seg["isthing"] and not seg["iscrowd"]:
      instance = next_instance.get(cls, 0) + 1
      next_instance[cls] = instance
    pan[ids == seg["id"]] = cls * _COCO_DIV + instance
  return pan


def _perturb(gt, rng, thing_train_ids, stuff_train_ids):
  """A plausible prediction in our encoding, made from the ground truth."""
  pred = gt.copy()
  void = _COCO_IGNORE * _COCO_DIV
  seg_ids = [s for s in np.unique(gt) if s != void]
  things = [s for s in seg_ids if s // _COCO_DIV in thing_train_ids and s % _COCO_DIV]
  stuff = [s for s in seg_ids if s // _COCO_DIV in stuff_train_ids]
  crowds = [s for s in seg_ids if s // _COCO_DIV in thing_train_ids and s % _COCO_DIV == 0]
  rng.shuffle(things)
  # Shift some instances (moves them partly off their GT: IoU falls, some unmatched).
  for s in things[:4]:
    mask = gt == s
    pred[np.roll(mask, int(rng.integers(3, 25)), axis=int(rng.integers(0, 2)))] = s
  # Erode one instance towards void and drop another.
  mask = gt == things[4]
  inner = mask & np.roll(mask, 3, 0) & np.roll(mask, -3, 0) & np.roll(mask, 3, 1)
  pred[mask & ~inner] = void
  pred[gt == things[5]] = void
  # Relabel one instance to another thing class; merge two instances of one class.
  other = [c for c in thing_train_ids if c != things[6] // _COCO_DIV][0]
  pred[gt == things[6]] = other * _COCO_DIV + 200
  same = [s for s in things[7:] if s // _COCO_DIV == things[7] // _COCO_DIV]
  if len(same) >= 2:
    pred[gt == same[1]] = same[0]
  # Relabel part of a stuff region to another stuff class.
  region = gt == stuff[0]
  rows = np.flatnonzero(region.any(axis=1))
  region[rows[len(rows) // 2]:] = False
  pred[region] = stuff_train_ids[-1] * _COCO_DIV
  # Predictions on each crowd: the crowd's class (ignored) and a strip of sky-like stuff.
  for s in crowds:
    ys, xs = np.nonzero(gt == s)
    pred[ys[: len(ys) // 2], xs[: len(xs) // 2]] = s + 201
  # Blobs over void and over other segments.
  h, w = gt.shape
  for k in range(3):
    y, x = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
    pred[y:y + 40, x:x + 40] = thing_train_ids[k] * _COCO_DIV + 210 + k
  pred[gt == void] = np.where(rng.random(np.sum(gt == void)) < 0.5, void,
                              stuff_train_ids[0] * _COCO_DIV)
  return pred


def _to_coco_segments(pred, dataset_id, is_thing):
  """Our encoding -> segment-id map (0 = unlabelled) + segments_info, via PNG bytes."""
  ids = np.zeros(pred.shape, np.int64)
  segments = []
  for k, label in enumerate(np.unique(pred)):
    cls = int(label // _COCO_DIV)
    if cls == _COCO_IGNORE:
      continue
    seg_id = 1000 + 37 * k  # arbitrary, distinct, non-zero ids
    ids[pred == label] = seg_id
    segments.append({"id": seg_id, "category_id": dataset_id[cls],
                     "iscrowd": 0, "isthing": int(is_thing[cls])})
  return ids, segments


def test_matches_panopticapi_on_coco_sample(tmp_path):
  with open(os.path.join(_SAMPLE, "panoptic_coco_categories.json")) as f:
    category_list = json.load(f)
  with open(os.path.join(_SAMPLE, "panoptic_examples.json")) as f:
    annotations = json.load(f)["annotations"]
  categories = {c["id"]: c for c in category_list}
  train_id = {c["id"]: i for i, c in enumerate(category_list)}
  dataset_id = {i: c["id"] for i, c in enumerate(category_list)}
  is_thing = [bool(c["isthing"]) for c in category_list]
  thing_ids = [i for i, t in enumerate(is_thing) if t]
  stuff_ids = [i for i, t in enumerate(is_thing) if not t]

  ours = panoptic_quality.PanopticQuality(len(category_list), is_thing, _COCO_DIV,
                                          _COCO_IGNORE)
  ref_stats = {cat: [0.0, 0, 0, 0] for cat in categories}
  rng = np.random.default_rng(0)
  for ann in annotations:
    gt_ids = _rgb_to_id(np.array(Image.open(
        os.path.join(_SAMPLE, "panoptic_examples", ann["file_name"]))))
    gt_segments = [dict(s, isthing=categories[s["category_id"]]["isthing"])
                   for s in ann["segments_info"]]
    for s in gt_segments:  # the JSON areas panopticapi uses are the pixel counts
      assert s["area"] == np.sum(gt_ids == s["id"])
    gt = _to_our_encoding(gt_ids, gt_segments, train_id)
    for variant in range(2):
      pred = gt if variant == 0 else _perturb(gt, rng, thing_ids, stuff_ids)
      pred_ids, pred_segments = _to_coco_segments(pred, dataset_id, is_thing)
      # Round-trip through a COCO panoptic PNG, as panopticapi reads it.
      png = tmp_path / f"{variant}_{ann['file_name']}"
      Image.fromarray(_id_to_rgb(pred_ids)).save(png)
      pred_ids = _rgb_to_id(np.array(Image.open(png)))
      image_stats = _panopticapi_reference(gt_ids, gt_segments, pred_ids, pred_segments,
                                           categories)
      for cat, values in image_stats.items():
        ref_stats[cat] = [a + b for a, b in zip(ref_stats[cat], values)]
      single = panoptic_quality.PanopticQuality(len(category_list), is_thing, _COCO_DIV,
                                                _COCO_IGNORE)
      single.update(gt, pred)
      for cat, (iou, tp, fp, fn) in image_stats.items():
        c = train_id[cat]
        assert (single.tp[c], single.fp[c], single.fn[c]) == (tp, fp, fn), cat
        assert single.iou_sum[c] == pytest.approx(iou, abs=1e-12), cat
      if variant == 1:
        # The perturbation must exercise every kind of statistic.
        assert single.tp.sum() > 0 and single.fp.sum() > 0 and single.fn.sum() > 0
        assert np.any(single.iou_sum[single.tp > 0] / single.tp[single.tp > 0] < 0.999)
        # Some unmatched predictions lie mostly on void / crowd and are ignored.
        assert len(pred_segments) > single.tp.sum() + single.fp.sum()
      ours.merge(single)

  result = ours.result()
  for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
    expected, per_class = _reference_average(ref_stats, categories, isthing)
    assert result[name]["n"] == expected["n"], name
    for key in ("pq", "sq", "rq"):
      assert result[name][key] == pytest.approx(expected[key], abs=1e-12), (name, key)
    if isthing is None:
      for cat, values in per_class.items():
        for key in ("pq", "sq", "rq"):
          assert result["per_class"][train_id[cat]][key] == pytest.approx(
              values[key], abs=1e-12), (cat, key)
  assert 0.0 < result["All"]["pq"] < 1.0
