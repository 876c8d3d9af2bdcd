"""Overlapping instance masks -> COCO results JSON -> pycocotools AP.

A hand-made case whose AP is worked out by hand (COCO's 101-point interpolation),
and the evaluator end to end with a stand-in postprocessor that declares
``instance_masks``: its ``instance_results.json``, scored by COCOeval against
ground truth built here, gives the AP of ``results.json``.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deeplab_panoptic import common
from deeplab_panoptic.data.dataset_info import SHAPES
from deeplab_panoptic.evaluation.instance_ap import InstanceAP
from deeplab_panoptic.evaluation.metrics import SegmentationMetrics
from deeplab_panoptic.postprocess import base as postprocess_base
from deeplab_panoptic.training.evaluator import PanopticEvaluator

DIV, IGNORE = SHAPES.label_divisor, SHAPES.ignore_label
SKY = 3  # a stuff class of SHAPES; 0 (circle) is a thing


def _box(shape, y0, y1, x0, x1):
  mask = np.zeros(shape, bool)
  mask[y0:y1, x0:x1] = True
  return mask


def _hand_case():
  """One 10x10 image: two circles A, B (ground truth); sky elsewhere.

  Detections, by score: A exactly (0.9, true positive); a mask overlapping A with
  IoU 16/36 < 0.5 (0.8, false positive at every IoU threshold); B exactly (0.7,
  true positive); a detection with class -1 (skipped). Recall after each kept
  detection: 1/2, 1/2, 1; precision 1, 1/2, 2/3. COCO's interpolated precision is
  1 at the 51 recall points 0..0.50 and 2/3 at the 50 points 0.51..1, at every
  IoU threshold: AP = AP50 = AP75 = (51 + 50 * 2/3) / 101.
  """
  shape = (10, 10)
  a, b = _box(shape, 0, 4, 0, 4), _box(shape, 6, 10, 6, 10)
  gt = np.full(shape, SKY * DIV)
  gt[a] = 0 * DIV + 1
  gt[b] = 0 * DIV + 2
  overlapping = _box(shape, 2, 6, 2, 6)          # 4 of its 16 pixels are in A
  # Listed out of score order: the scores, not the order, must rank them.
  masks = np.stack([overlapping, b, a, a], axis=-1)
  classes = np.array([0, 0, 0, -1])
  scores = np.array([0.8, 0.7, 0.9, 0.95])
  expected = (51 + 50 * 2 / 3) / 101
  return gt, masks, classes, scores, (a, b), expected


def test_hand_made_coco_results_json_scores_the_hand_computed_ap(tmp_path):
  gt, masks, classes, scores, (a, b), expected = _hand_case()
  ap = InstanceAP(SHAPES.is_thing, DIV, IGNORE)
  ap.update_instances(gt, masks, classes, scores, image_id=42)
  result = ap.result()
  assert [result["ap"], result["ap50"], result["ap75"]] == pytest.approx([expected] * 3)

  # The results JSON (dataset category ids), read back by pycocotools' own
  # loadRes against ground truth written here, gives the same AP.
  results_path = tmp_path / "results.json"
  results_path.write_text(json.dumps(ap.coco_results(SHAPES.dataset_id_from_train_id())))
  written = json.loads(results_path.read_text())
  assert [d["image_id"] for d in written] == [42, 42, 42]
  assert [d["category_id"] for d in written] == [1, 1, 1]   # circle's dataset id
  coco_gt = COCO()
  coco_gt.dataset = {
      "images": [{"id": 42, "height": 10, "width": 10}],
      "categories": [{"id": 1, "name": "circle"}],
      "annotations": [{"id": k + 1, "image_id": 42, "category_id": 1, "iscrowd": 0,
                       "area": float(m.sum()), "bbox": [0, 0, 1, 1],
                       "segmentation": _rle(m)} for k, m in enumerate((a, b))]}
  coco_gt.createIndex()
  evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), iouType="segm")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  assert evaluator.stats[:3] == pytest.approx([expected] * 3)


def _rle(mask):
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_segmentation_metrics_take_ap_from_instance_masks():
  gt, masks, classes, scores, _, expected = _hand_case()
  metrics = SegmentationMetrics({"semantic", "instance_masks"}, SHAPES.num_classes,
                                SHAPES.is_thing, DIV, IGNORE)
  metrics.update(gt, {common.SEMANTIC: gt // DIV, common.INSTANCE_MASKS: masks,
                      common.INSTANCE_CLASSES: classes, common.INSTANCE_SCORES: scores})
  assert metrics.result()["AP"]["ap"] == pytest.approx(expected)
  with pytest.raises(ValueError, match="differ in size"):
    metrics.update(gt, {common.SEMANTIC: gt // DIV, common.INSTANCE_MASKS: masks[:5],
                        common.INSTANCE_CLASSES: classes, common.INSTANCE_SCORES: scores})


class _InstancePassThrough(postprocess_base.Postprocessor):
  """Semantic = channel 0 // DIV; K = 3 instance masks from channels 1 and 2."""

  results = frozenset({"semantic", "instance_masks"})
  required_outputs = ("image",)

  def predicted_classes(self, outputs):
    return self.num_classes

  def __call__(self, outputs, target_size):
    del target_size
    image = tf.cast(outputs["image"], tf.int32)
    batch = tf.shape(image)[0]
    masks = tf.stack([image[..., 1] == 1, image[..., 2] == 1, image[..., 1] == 2], -1)
    return {common.SEMANTIC: image[..., 0] // DIV, common.INSTANCE_MASKS: masks,
            common.INSTANCE_CLASSES: tf.tile([[0, 0, 1]], [batch, 1]),
            common.INSTANCE_SCORES: tf.tile([[0.9, 0.6, 0.8]], [batch, 1])}


def test_evaluator_writes_and_scores_the_coco_results_json(tmp_path):
  """Two images at 8x8; the second was resized x0.5, so its masks are restored x2."""
  rng = np.random.default_rng(3)
  images, gts, restored = [], [], []
  for resized, original in (((8, 8), (8, 8)), ((4, 4), (8, 8))):
    image = np.zeros((8, 8, 3), np.float32)
    image[..., 0] = SKY * DIV
    rh, rw = resized
    for channel, value in ((1, 1), (2, 1), (1, 2)):
      y, x = rng.integers(0, rh - 1, size=2)
      image[y:y + 3, x:x + 2, channel] = value     # masks 0 and 1 may overlap
    masks = np.stack([image[..., 1] == 1, image[..., 2] == 1, image[..., 1] == 2], -1)
    masks = masks[:rh, :rw]
    if (rh, rw) != original:
      masks = np.repeat(np.repeat(masks, 2, axis=0), 2, axis=1)
    gt = np.full(original, SKY * DIV)
    gt[np.roll(masks[..., 0], 1, axis=0)] = 0 * DIV + 1   # shifted: IoU < 1
    gt[masks[..., 2]] = 1 * DIV + 1
    images.append(image)
    gts.append(gt)
    restored.append(masks)
  features = {common.IMAGE: np.stack(images), common.GT_PANOPTIC_ORIGINAL: np.stack(gts),
              common.RESIZED_HEIGHT: np.array([8, 4], np.int32),
              common.RESIZED_WIDTH: np.array([8, 4], np.int32),
              common.ORIGINAL_HEIGHT: np.array([8, 8], np.int32),
              common.ORIGINAL_WIDTH: np.array([8, 8], np.int32),
              common.IMAGE_NAME: np.array(["000000000005.jpg", "000000000011.jpg"])}
  strategy = tf.distribute.get_strategy()
  dataset = tf.data.Dataset.from_tensor_slices(features).batch(2)
  post = _InstancePassThrough(SHAPES.is_thing, DIV, IGNORE)
  evaluator = PanopticEvaluator(
      strategy, lambda images, training: {"image": images}, post,
      strategy.experimental_distribute_dataset(dataset), SHAPES, str(tmp_path),
      tf.Variable(4, dtype=tf.int64), num_summary_images=0, progress_bar=False)
  evaluator.evaluate(tf.constant(-1, tf.int32))
  results = json.loads((tmp_path / "eval" / "results.json").read_text())
  path = results["instance_results_json"]
  written = json.loads(open(path).read())
  assert sorted({d["image_id"] for d in written}) == [5, 11]

  # Independent ground truth (dataset ids) from the masks restored here.
  coco_gt = COCO()
  anns = []
  for image_id, gt in zip((5, 11), gts):
    for label in np.unique(gt):
      if label // DIV != SKY:
        mask = gt == label
        anns.append({"id": len(anns) + 1, "image_id": image_id, "iscrowd": 0,
                     "category_id": int(label // DIV) + 1, "area": float(mask.sum()),
                     "bbox": [0, 0, 1, 1], "segmentation": _rle(mask)})
  coco_gt.dataset = {"images": [{"id": i, "height": 8, "width": 8} for i in (5, 11)],
                     "categories": [{"id": c + 1, "name": str(c)} for c in (0, 1, 2)],
                     "annotations": anns}
  coco_gt.createIndex()
  coco_dt = coco_gt.loadRes(path)
  for det in written:   # the written masks are the ones restored here
    k = [0.9, 0.6, 0.8].index(pytest.approx(det["score"]))
    mask = mask_utils.decode(det["segmentation"]).astype(bool)
    np.testing.assert_array_equal(mask, restored[(5, 11).index(det["image_id"])][..., k])
  cocoeval = COCOeval(coco_gt, coco_dt, iouType="segm")
  cocoeval.evaluate()
  cocoeval.accumulate()
  cocoeval.summarize()
  assert 0 < cocoeval.stats[0] < 1
  assert [results["AP"], results["AP50"], results["AP75"]] == pytest.approx(
      list(100 * cocoeval.stats[:3]), abs=1e-9)
  assert "PQ" not in results and "mIoU" in results
