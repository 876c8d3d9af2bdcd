"""Tests for mIoU, instance AP and the streaming evaluation accumulator."""

import numpy as np
import pytest

from deeplab_panoptic.evaluation import instance_ap
from deeplab_panoptic.evaluation import metrics
from deeplab_panoptic.evaluation import semantic_iou

DIV, IGNORE = 100, 255
IS_THING = (True, True, False, False)   # 0 person, 1 car, 2 sky, 3 grass


# ----------------------------------------------------------------------------
# mIoU
# ----------------------------------------------------------------------------
def test_miou_hand_worked_with_void_and_absent_class():
  gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
  pred = np.array([[0, 1, 1, 1], [255, 2, 0, 2]])
  m = semantic_iou.MeanIoU(num_classes=4, ignore_label=IGNORE)
  m.update(gt, pred)
  # Class 0: TP 1, GT 2, predicted 1 (the 0 on GT void does not count): 1/2.
  # Class 1: TP 2, GT 2, predicted 3: 2/3. Class 2: TP 1, GT 2 (one predicted
  # void: a miss), predicted 1: 1/2. Class 3 absent from both: left out.
  np.testing.assert_allclose(m.per_class_iou()[:3], [0.5, 2 / 3, 0.5])
  assert np.isnan(m.per_class_iou()[3])
  assert m.result() == {"miou": pytest.approx((0.5 + 2 / 3 + 0.5) / 3), "n": 3}


def test_miou_batch_merge_and_errors():
  rng = np.random.default_rng(0)
  gt = rng.integers(0, 4, size=(3, 6, 7))
  gt[gt == 3] = IGNORE
  pred = rng.integers(0, 4, size=(3, 6, 7))
  whole = semantic_iou.MeanIoU(4, IGNORE)
  for i in range(3):
    whole.update(gt[i], pred[i])
  batched = semantic_iou.MeanIoU(4, IGNORE)
  batched.update(gt[:2], pred[:2])
  other = semantic_iou.MeanIoU(4, IGNORE)
  other.update(gt[2], pred[2])
  batched.merge(other)
  np.testing.assert_array_equal(batched.confusion, whole.confusion)
  assert batched.result() == whole.result()
  assert semantic_iou.MeanIoU(4, IGNORE).merge_state(whole.state()).result() == whole.result()
  # Independent computation: IoU from boolean masks.
  keep = gt != IGNORE
  ious = []
  for c in range(4):
    inter = np.sum((gt == c) & (pred == c) & keep)
    union = np.sum(((gt == c) | (pred == c)) & keep)
    if union:
      ious.append(inter / union)
  assert whole.result()["miou"] == pytest.approx(np.mean(ious))
  with pytest.raises(ValueError, match="neither train ids"):
    whole.update(np.array([[7]]), np.array([[0]]))
  with pytest.raises(ValueError, match="shape"):
    whole.update(np.zeros((2, 2)), np.zeros((2, 3)))


# ----------------------------------------------------------------------------
# Instance AP
# ----------------------------------------------------------------------------
def _scene():
  gt = np.full((20, 20), 2 * DIV)
  gt[2:8, 2:8] = 0 * DIV + 1
  gt[10:16, 10:18] = 1 * DIV + 2
  gt[12:18, 0:6] = 0 * DIV          # person crowd
  gt[0, :] = IGNORE * DIV
  return gt


def test_ap_perfect_missed_and_crowd():
  gt = _scene()
  ap = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
  pred = gt.copy()
  pred[12:18, 0:6] = 2 * DIV       # the crowd is predicted as sky
  ap.update(gt, pred, {1: 0.9, 102: 0.8})
  assert ap.result() == pytest.approx({"ap": 1.0, "ap50": 1.0, "ap75": 1.0})

  # The car is missed: AP 1 for person, 0 for car, averaged over the classes.
  missed = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
  pred2 = pred.copy()
  pred2[10:16, 10:18] = 2 * DIV
  missed.update(gt, pred2, {1: 0.9})
  assert missed.result()["ap"] == pytest.approx(0.5)

  # A confident extra person on the crowd is ignored; the same prediction off
  # the crowd is a false positive ranked first.
  on_crowd = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
  pred3 = pred.copy()
  pred3[12:18, 0:6] = 0 * DIV + 7
  on_crowd.update(gt, pred3, {1: 0.5, 102: 0.8, 7: 0.99})
  assert on_crowd.result()["ap"] == pytest.approx(1.0)
  gt_no_crowd = gt.copy()
  gt_no_crowd[12:18, 0:6] = 2 * DIV
  off_crowd = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
  off_crowd.update(gt_no_crowd, pred3, {1: 0.5, 102: 0.8, 7: 0.99})
  assert off_crowd.result()["ap"] < 0.9

  with pytest.raises(ValueError, match="no score"):
    ap.update(gt, pred, {1: 0.9})


def test_ap_no_detections_and_no_instances():
  gt = _scene()
  ap = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
  ap.update(gt, np.full_like(gt, 2 * DIV), {})
  assert ap.result() == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
  empty = instance_ap.InstanceAP(IS_THING, DIV, IGNORE)
  empty.update(np.full((4, 4), 2 * DIV), np.full((4, 4), 2 * DIV), {})
  assert empty.result()["ap"] == -1.0


# ----------------------------------------------------------------------------
# The streaming accumulator
# ----------------------------------------------------------------------------
def _images(num, seed=0):
  rng = np.random.default_rng(seed)
  gts, preds, semantics, scores = [], [], [], []
  for _ in range(num):
    gt = np.full((16, 20), 2 * DIV)
    gt[8:] = 3 * DIV
    for k in range(4):
      y, x = rng.integers(0, 12), rng.integers(0, 16)
      gt[y:y + 4, x:x + 4] = int(rng.integers(0, 2)) * DIV + int(rng.integers(0, 3))
    gt[rng.random(gt.shape) < 0.05] = IGNORE * DIV
    pred = np.roll(gt, int(rng.integers(-2, 3)), axis=1)
    pred[pred // DIV == IGNORE] = 3 * DIV
    # Thing instances are slots 1..5; crowd-like instance 0 becomes slot 6.
    thing = np.isin(pred // DIV, [0, 1])
    pred[thing & (pred % DIV == 0)] += 6
    pred[rng.random(gt.shape) < 0.02] = IGNORE * DIV
    semantic = pred // DIV
    semantic[rng.random(gt.shape) < 0.05] = 2  # SEMANTIC need not equal PANOPTIC // div
    gts.append(gt)
    preds.append(pred)
    semantics.append(semantic)
    scores.append(rng.random(8))
  return (np.stack(gts), np.stack(preds), np.stack(semantics), np.stack(scores))


def _new():
  return metrics.PanopticMetrics(4, IS_THING, DIV, IGNORE)


def test_streaming_batch_equals_per_image_and_merge_equals_whole():
  gt, pred, sem, scores = _images(6)
  per_image = _new()
  for i in range(6):
    per_image.update(gt[i], pred[i], sem[i], scores[i])
  batched = _new()
  batched.update(gt[:4], pred[:4], sem[:4], scores[:4])
  batched.update(gt[4:], pred[4:], sem[4:], scores[4:])
  # Same images, same order: identical numbers.
  assert batched.result() == per_image.result()
  expected = per_image.result()
  assert 0 < expected["PQ"]["All"]["pq"] < 1 and 0 < expected["mIoU"] < 1
  assert 0 < expected["AP"]["ap"] <= 1

  # Replicas / hosts: three accumulators combined, via objects and via states.
  parts = [_new() for _ in range(3)]
  for k, part in enumerate(parts):
    part.update(gt[2 * k:2 * k + 2], pred[2 * k:2 * k + 2], sem[2 * k:2 * k + 2],
                scores[2 * k:2 * k + 2])
  merged = _new().merge(parts[0]).merge(parts[1]).merge(parts[2])
  from_states = _new()
  for part in parts:
    from_states.merge_state(part.state())
  for combined in (merged, from_states):
    np.testing.assert_array_equal(combined.pq.tp, per_image.pq.tp)
    np.testing.assert_array_equal(combined.pq.fp, per_image.pq.fp)
    np.testing.assert_array_equal(combined.pq.fn, per_image.pq.fn)
    np.testing.assert_allclose(combined.pq.iou_sum, per_image.pq.iou_sum, rtol=1e-15)
    np.testing.assert_array_equal(combined.miou.confusion, per_image.miou.confusion)
    result = combined.result()
    assert result["mIoU"] == expected["mIoU"]
    assert result["AP"] == expected["AP"]
    for group in ("All", "Things", "Stuff"):
      for key in ("pq", "sq", "rq"):
        assert result["PQ"][group][key] == pytest.approx(expected["PQ"][group][key],
                                                         rel=1e-14)


def test_streaming_scores_and_stuff_only_dataset():
  pred = np.array([[0 * DIV + 3, 2 * DIV], [1 * DIV + 1, IGNORE * DIV]])
  scores = metrics.scores_from_slots(pred, [0.1, 0.2, 0.3], np.array(IS_THING), DIV)
  assert scores == {3: 0.3, 101: 0.1}
  with pytest.raises(ValueError, match="not a slot"):
    metrics.scores_from_slots(pred, [0.1, 0.2], np.array(IS_THING), DIV)
  stuff_only = metrics.PanopticMetrics(2, (False, False), DIV, IGNORE)
  stuff_only.update(np.zeros((3, 3), int), np.zeros((3, 3), int))
  result = stuff_only.result()
  assert result["AP"] is None and result["mIoU"] == 1.0 and result["PQ"]["All"]["pq"] == 1.0


def test_rle_encoding_equals_pycocotools():
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  index = rng.integers(0, 4, size=(7, 9))
  index[:, :2] = 3
  index[-1, -1] = 2
  wanted = np.array([0, 1, 2, 3])
  ours = instance_ap._encode(index, wanted)  # pylint: disable=protected-access
  expected = mask_utils.encode(np.asfortranarray(
      (index[:, :, None] == wanted).astype(np.uint8)))
  assert ours == expected


# ----------------------------------------------------------------------------
# Metrics built from the declared results.
# ----------------------------------------------------------------------------
def _instance_view(pred, scores):
  """The instance result of panoptic predictions: thing instance k + 1 = slot k."""
  semantic, instance = pred // DIV, pred % DIV
  thing = np.isin(semantic, [c for c, t in enumerate(IS_THING) if t])
  instance = np.where(thing, instance, 0)
  classes = np.full(scores.shape, -1)
  for b in range(pred.shape[0]):
    ids = instance[b][instance[b] > 0]
    classes[b, ids - 1] = semantic[b][instance[b] > 0]
  return instance, classes


def test_declared_results_choose_the_metrics():
  gt, pred, sem, scores = _images(5)
  # One slot per thing segment (the postprocessors' contract): car instances
  # 1, 2, 6 move to slots 3, 4, 7 so that no two classes share an instance id.
  car = pred // DIV == 1
  pred = np.where(car, DIV + np.array([0, 3, 4, 0, 0, 0, 7, 0])[pred % DIV], pred)
  full = _new()
  full.update(gt, pred, sem, scores)
  expected = full.result()

  semantic_only = metrics.SegmentationMetrics({"semantic"}, 4, IS_THING, DIV, IGNORE)
  semantic_only.update(gt, {"semantic": sem})
  assert set(semantic_only.result()) == {"mIoU"}
  assert semantic_only.result()["mIoU"] == expected["mIoU"]
  assert semantic_only.pq is None and semantic_only.ap is None

  # AP from an instance map (no panoptic map) equals AP from the panoptic map.
  instance, classes = _instance_view(pred, scores)
  instance_only = metrics.SegmentationMetrics({"instance"}, 4, IS_THING, DIV, IGNORE)
  instance_only.update(gt, {"instance": instance, "segment_classes": classes,
                            "segment_scores": scores})
  assert set(instance_only.result()) == {"AP"}
  assert instance_only.result()["AP"] == expected["AP"]
  assert 0 < expected["AP"]["ap"] <= 1

  panoptic_only = metrics.SegmentationMetrics({"panoptic"}, 4, IS_THING, DIV, IGNORE)
  panoptic_only.update(gt, {"panoptic": pred})
  assert set(panoptic_only.result()) == {"PQ"}
  assert panoptic_only.result()["PQ"] == expected["PQ"]


def test_declared_results_errors():
  with pytest.raises(ValueError, match="non-empty subset"):
    metrics.SegmentationMetrics({"depth"}, 4, IS_THING, DIV, IGNORE)
  with pytest.raises(ValueError, match="non-empty subset"):
    metrics.SegmentationMetrics(set(), 4, IS_THING, DIV, IGNORE)
  semantic_only = metrics.SegmentationMetrics({"semantic"}, 4, IS_THING, DIV, IGNORE)
  with pytest.raises(ValueError, match="'semantic' is needed"):
    semantic_only.update(np.zeros((2, 2), int), {"panoptic": np.zeros((2, 2), int)})
  with pytest.raises(ValueError, match="instance ids"):
    metrics.instance_labels(np.array([[0, 2]]), [1, -1], DIV, IGNORE)
  np.testing.assert_array_equal(
      metrics.instance_labels(np.array([[0, 2], [1, 0]]), [1, 0], DIV, IGNORE),
      [[IGNORE * DIV, 0 * DIV + 2], [1 * DIV + 1, IGNORE * DIV]])
