"""mIoU and mask AP of the metric accumulators against independent computations.

On a hand-made scene (tests/evaluation/reference_metrics.py) with a class in
neither the ground truth nor the prediction, a class only in the prediction,
crowd regions, ground-truth void and predicted void: mIoU against a numpy
confusion matrix, mask AP against pycocotools' COCOeval run on the same masks
written as COCO JSON.
"""

import numpy as np
import pytest

from deeplab_panoptic import common
from deeplab_panoptic.evaluation import metrics
from tests.evaluation import reference_metrics as ref

DIV, IGNORE = 100, 255
# 0 person, 1 car, 2 bike, 3 sky, 4 grass, 5 dog: grass and dog are in neither.
IS_THING = (True, True, True, False, False, True)
NUM_CLASSES = len(IS_THING)
# Distinct scores (no ties), not in slot order, so that the ranking matters.
SLOT_SCORES = np.array([[0.62, 0.35, 0.93, 0.41, 0.88, 0.57],
                        [0.71, 0.29, 0.66, 0.12, 0.05, 0.99]])


def _scene():
  return ref.hand_scene(IS_THING, DIV, IGNORE, SLOT_SCORES)


def test_the_scene_has_the_cases():
  """The cases the comparisons below rely on are really in the scene."""
  gt, pred, _ = _scene()
  _, iou, confusion = ref.numpy_miou(gt // DIV, pred // DIV, NUM_CLASSES, IGNORE)
  assert np.isnan(iou[4]) and np.isnan(iou[5])        # in neither
  assert iou[2] == 0 and confusion[:, 2].sum() > 0     # bike: only predicted
  assert confusion[NUM_CLASSES].sum() > 0              # ground-truth void
  assert confusion[:NUM_CLASSES, NUM_CLASSES].sum() > 0  # predicted void, labelled pixel
  assert confusion[NUM_CLASSES, 2] > 0                 # a prediction on void
  assert np.any((gt == 0) & (pred // DIV == 0))        # a prediction on the crowd


def test_panoptic_model_miou_matches_numpy_confusion_matrix():
  gt, pred, _ = _scene()
  semantic = pred // DIV
  # A semantic map that is not the panoptic one (the postprocessors may differ).
  semantic[1, 20:, :] = 1
  for pred_semantic in (None, semantic):
    m = metrics.PanopticMetrics(NUM_CLASSES, IS_THING, DIV, IGNORE)
    for i in range(2):
      m.update(gt[i], pred[i], None if pred_semantic is None else pred_semantic[i],
               segment_scores=SLOT_SCORES[i])
    want_sem = pred // DIV if pred_semantic is None else pred_semantic
    expected, iou, _ = ref.numpy_miou(gt // DIV, want_sem, NUM_CLASSES, IGNORE)
    assert 0 < expected < 1
    assert m.result()["mIoU"] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(m.miou.per_class_iou(), iou, rtol=0, atol=1e-12)


def test_semantic_only_miou_matches_numpy_confusion_matrix():
  gt, pred, _ = _scene()
  m = metrics.SegmentationMetrics({"semantic"}, NUM_CLASSES, IS_THING, DIV, IGNORE)
  m.update(gt, {common.SEMANTIC: pred // DIV})  # batched [2, H, W]
  expected, iou, _ = ref.numpy_miou(gt // DIV, pred // DIV, NUM_CLASSES, IGNORE)
  assert m.result() == {"mIoU": pytest.approx(expected, abs=1e-12)}
  np.testing.assert_allclose(m.miou.per_class_iou(), iou, rtol=0, atol=1e-12)


def _cocoeval(ap_images, tmp_path):
  things = [c for c, thing in enumerate(IS_THING) if thing]
  return ref.cocoeval_ap(ap_images, things, ref.SCENE_SHAPE, str(tmp_path))


def test_panoptic_model_ap_matches_cocoeval(tmp_path):
  gt, pred, ap_images = _scene()
  m = metrics.PanopticMetrics(NUM_CLASSES, IS_THING, DIV, IGNORE)
  m.update(gt, pred, segment_scores=SLOT_SCORES)  # batched
  stats = _cocoeval(ap_images, tmp_path)
  ap = m.result()["AP"]
  assert 0 < stats[0] < 1 and stats[1] != stats[0]   # a case that discriminates
  np.testing.assert_allclose([ap["ap"], ap["ap50"], ap["ap75"]], stats[:3], rtol=0,
                             atol=1e-12)


def test_instance_only_ap_matches_cocoeval(tmp_path):
  """The instance-map path: thing instance k + 1 is slot k, its class in SEGMENT_CLASSES."""
  gt, pred, ap_images = _scene()
  is_thing_pixel = np.asarray(IS_THING)[np.clip(pred // DIV, 0, NUM_CLASSES - 1)]
  is_thing_pixel &= pred // DIV < NUM_CLASSES
  instance = np.where(is_thing_pixel, pred % DIV, 0)
  classes = np.full((2, ref.SCENE_NUM_SLOTS), -1)
  for i in range(2):
    for label in np.unique(pred[i][is_thing_pixel[i]]):
      classes[i, label % DIV - 1] = label // DIV
  m = metrics.SegmentationMetrics({"instance"}, NUM_CLASSES, IS_THING, DIV, IGNORE)
  m.update(gt, {common.INSTANCE: instance, common.SEGMENT_CLASSES: classes,
                common.SEGMENT_SCORES: SLOT_SCORES})
  stats = _cocoeval(ap_images, tmp_path)
  ap = m.result()["AP"]
  np.testing.assert_allclose([ap["ap"], ap["ap50"], ap["ap75"]], stats[:3], rtol=0,
                             atol=1e-12)
