"""The orbit evaluator's metrics and prediction writer, with a stand-in model.

The "model" passes the image through and the "postprocessor" reads the predicted
panoptic label from the image's first channel, so the test controls the
predictions exactly and checks the evaluator's plumbing: cropping and resizing
to the original size, padding examples, results.json keys, and the COCO
predictions, which coco_pq must score exactly as the evaluator did.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.data.dataset_info import SHAPES
from deeplab_panoptic.data import coco_panoptic
from deeplab_panoptic.evaluation import coco_pq
from deeplab_panoptic.evaluation.panoptic_quality import PanopticQuality
from deeplab_panoptic.postprocess import base as postprocess_base
from deeplab_panoptic.training.evaluator import PanopticEvaluator
from tests.evaluation import reference_metrics

DIV, VOID = SHAPES.label_divisor, SHAPES.ignore_label * SHAPES.label_divisor
NUM_SLOTS = 6


def _examples():
  """Three eval examples (one resized x2) and one padding example, 12x12 padded."""
  rng = np.random.default_rng(0)
  images, gts, preds, names, sizes = [], [], [], [], []
  for k, (resized, original) in enumerate((((12, 12), (12, 12)), ((10, 12), (10, 12)),
                                           ((6, 6), (12, 12)), ((0, 0), (0, 0)))):
    pred = np.full((12, 12), 3 * DIV + 0)            # sky
    pred[6:] = 4 * DIV                                 # ground
    for slot in range(3):
      y, x = rng.integers(0, 8, size=2)
      pred[y:y + 4, x:x + 3] = (slot % 3) * DIV + slot + 1
    pred[0, :2] = VOID
    rh, rw = resized
    oh, ow = original
    restored = pred[:rh, :rw]
    if (rh, rw) != (oh, ow):
      restored = np.repeat(np.repeat(restored, 2, axis=0), 2, axis=1)
    gt = np.full((12, 12), VOID)
    gt[:oh, :ow] = np.roll(restored, 1, axis=1)
    gt[:oh, :ow][restored // DIV == 2] = 2 * DIV      # a triangle crowd
    images.append(np.repeat(pred[..., None], 3, axis=-1).astype(np.float32))
    gts.append(gt)
    preds.append(restored)
    names.append(f"{k:012d}.jpg" if oh else "")
    sizes.append((rh, rw, oh, ow))
  sizes = np.array(sizes, np.int32)
  features = {common.IMAGE: np.stack(images), common.GT_PANOPTIC_ORIGINAL: np.stack(gts),
              common.RESIZED_HEIGHT: sizes[:, 0], common.RESIZED_WIDTH: sizes[:, 1],
              common.ORIGINAL_HEIGHT: sizes[:, 2], common.ORIGINAL_WIDTH: sizes[:, 3],
              common.IMAGE_NAME: np.array(names)}
  return features, gts[:3], preds, names[:3]


class _PassThrough(postprocess_base.Postprocessor):
  """Reads the predicted panoptic map from the first image channel."""

  results = frozenset({"panoptic", "semantic", "instance"})
  required_outputs = ("image",)

  def predicted_classes(self, outputs):
    return self.num_classes

  def __call__(self, outputs, target_size):
    del target_size
    panoptic = tf.cast(outputs["image"][..., 0], tf.int32)
    batch = tf.shape(panoptic)[0]
    slots = tf.zeros([batch, NUM_SLOTS], tf.int32)
    return {common.PANOPTIC: panoptic, common.SEMANTIC: panoptic // DIV,
            common.INSTANCE: panoptic % DIV, common.SEGMENT_CLASSES: slots,
            common.SEGMENT_AREAS: slots,
            common.SEGMENT_SCORES: tf.tile(tf.linspace(0.9, 0.4, NUM_SLOTS)[tf.newaxis],
                                           [batch, 1])}


_postprocessor = _PassThrough(SHAPES.is_thing, DIV, SHAPES.ignore_label)


def test_evaluator_results_and_predictions(tmp_path):
  features, gts, preds, names = _examples()
  strategy = tf.distribute.get_strategy()
  dataset = tf.data.Dataset.from_tensor_slices(features).batch(2)
  evaluator = PanopticEvaluator(
      strategy, lambda images, training: {"image": images}, _postprocessor,
      strategy.experimental_distribute_dataset(dataset), SHAPES, str(tmp_path),
      tf.Variable(7, dtype=tf.int64), write_predictions=True)
  logs = evaluator.evaluate(tf.constant(-1, tf.int32))

  with open(tmp_path / "eval" / "results.json") as f:
    results = json.load(f)
  for key in ("step", "PQ", "SQ", "RQ", "PQ_thing", "PQ_stuff", "per_class", "mIoU", "AP"):
    assert key in results, key
  assert results["step"] == 7
  expected = PanopticQuality(SHAPES.num_classes, SHAPES.is_thing, DIV, SHAPES.ignore_label)
  for gt, pred in zip(gts, preds):
    h, w = pred.shape
    expected.update(gt[:h, :w], pred)
  assert results["PQ"] == pytest.approx(100 * expected.result()["All"]["pq"], abs=1e-12)
  assert 0 < results["PQ"] < 100 and 0 < results["mIoU"] <= 100 and results["AP"] >= 0
  gt_sem = [gt[:p.shape[0], :p.shape[1]] // DIV for gt, p in zip(gts, preds)]
  assert results["mIoU"] == pytest.approx(
      _numpy_miou(gt_sem, [p // DIV for p in preds], SHAPES.num_classes,
                  SHAPES.ignore_label)[0], abs=1e-9)
  assert logs["mIoU"] == results["mIoU"] and logs["AP"] == results["AP"]

  # The written predictions, scored by coco_pq against the GT in COCO format,
  # give the evaluator's numbers (crowd: thing segments with instance 0).
  pred_dir = tmp_path / "eval" / "predictions"
  with open(pred_dir / "panoptic.json") as f:
    written = json.load(f)
  assert [a["file_name"] for a in written["annotations"]] == [
      n.replace(".jpg", ".png") for n in names]
  gt_writer = coco_panoptic.CocoPanopticWriter(
      str(tmp_path / "gt"), SHAPES.dataset_id_from_train_id(), DIV, SHAPES.ignore_label,
      categories=SHAPES.coco_categories())
  for name, gt, pred in zip(names, gts, preds):
    h, w = pred.shape
    ann = gt_writer.add(name, gt[:h, :w])
    ids = coco_panoptic.read_id_png(str(tmp_path / "gt" / "panoptic" / ann["file_name"]))
    for seg in ann["segments_info"]:
      label = np.unique(gt[:h, :w][ids == seg["id"]])[0]
      seg["iscrowd"] = int(SHAPES.is_thing[label // DIV] and label % DIV == 0)
  result = coco_pq.pq_compute(gt_writer.close(), str(pred_dir / "panoptic.json"),
                              str(tmp_path / "gt" / "panoptic"), str(pred_dir / "panoptic"),
                              num_workers=1)
  assert 100 * result["All"]["pq"] == pytest.approx(results["PQ"], abs=1e-12)
  assert 100 * result["Things"]["pq"] == pytest.approx(results["PQ_thing"], abs=1e-12)


class _SemanticPassThrough(postprocess_base.Postprocessor):
  """Semantic-only: the predicted class is the first image channel // DIV."""

  results = frozenset({"semantic"})
  required_outputs = ("image",)

  def predicted_classes(self, outputs):
    return self.num_classes

  def __call__(self, outputs, target_size):
    del target_size
    return {common.SEMANTIC: tf.cast(outputs["image"][..., 0], tf.int32) // DIV}


def _numpy_miou(gts, preds, num_classes, ignore):
  """mIoU from a confusion matrix over labelled pixels (independent of MeanIoU)."""
  confusion = np.zeros((num_classes, num_classes + 1), np.int64)
  for gt, pred in zip(gts, preds):
    g, p = gt.reshape(-1), pred.reshape(-1)
    labelled = g != ignore
    p = np.where(p[labelled] >= num_classes, num_classes, p[labelled])
    np.add.at(confusion, (g[labelled], p), 1)
  ious = []
  for c in range(num_classes):
    tp = confusion[c, c]
    union = confusion[c].sum() + confusion[:, c].sum() - tp
    if union:
      ious.append(tp / union)
  return 100.0 * float(np.mean(ious)), confusion


def test_semantic_only_evaluator_reports_miou_from_its_declaration(tmp_path):
  """A semantic-only postprocessor: mIoU (numpy confusion matrix), no PQ / AP keys."""
  features, gts, preds, _ = _examples()
  strategy = tf.distribute.get_strategy()
  dataset = tf.data.Dataset.from_tensor_slices(features).batch(2)
  post = _SemanticPassThrough(SHAPES.is_thing, DIV, SHAPES.ignore_label)
  evaluator = PanopticEvaluator(
      strategy, lambda images, training: {"image": images}, post,
      strategy.experimental_distribute_dataset(dataset), SHAPES, str(tmp_path),
      tf.Variable(3, dtype=tf.int64))
  logs = evaluator.evaluate(tf.constant(-1, tf.int32))
  with open(tmp_path / "eval" / "results.json") as f:
    results = json.load(f)
  assert "PQ" not in results and "AP" not in results and "per_class" not in results
  gt_sem = [gt[:p.shape[0], :p.shape[1]] // DIV for gt, p in zip(gts, preds)]
  pred_sem = [p // DIV for p in preds]
  expected, confusion = _numpy_miou(gt_sem, pred_sem, SHAPES.num_classes,
                                    SHAPES.ignore_label)
  assert 0 < expected < 100
  assert results["mIoU"] == pytest.approx(expected, abs=1e-9)
  assert logs["mIoU"] == results["mIoU"]
  for c, name in enumerate(SHAPES.class_names):
    tp = confusion[c, c]
    union = confusion[c].sum() + confusion[:, c].sum() - tp
    if union:
      assert results["per_class_IoU"][name] == pytest.approx(100.0 * tp / union)


def test_panoptic_evaluator_miou_and_ap_match_numpy_and_cocoeval(tmp_path):
  """The panoptic-model path end to end: results.json's mIoU against a numpy
  confusion matrix and its AP against COCOeval on the same masks as COCO JSON,
  on the hand-made scene (a class in neither, a class only predicted, crowd,
  ground-truth and predicted void)."""
  scores = np.linspace(0.9, 0.4, NUM_SLOTS)  # _PassThrough's slot scores
  gt, pred, ap_images = reference_metrics.hand_scene(
      SHAPES.is_thing, DIV, SHAPES.ignore_label, np.stack([scores, scores]))
  size = np.full(2, reference_metrics.SCENE_SHAPE[0], np.int32)
  features = {common.IMAGE: np.repeat(pred[..., None], 3, axis=-1).astype(np.float32),
              common.GT_PANOPTIC_ORIGINAL: gt, common.RESIZED_HEIGHT: size,
              common.RESIZED_WIDTH: size, common.ORIGINAL_HEIGHT: size,
              common.ORIGINAL_WIDTH: size, common.IMAGE_NAME: np.array(["a.jpg", "b.jpg"])}
  strategy = tf.distribute.get_strategy()
  dataset = tf.data.Dataset.from_tensor_slices(features).batch(2)
  evaluator = PanopticEvaluator(
      strategy, lambda images, training: {"image": images}, _postprocessor,
      strategy.experimental_distribute_dataset(dataset), SHAPES, str(tmp_path),
      tf.Variable(1, dtype=tf.int64))
  evaluator.evaluate(tf.constant(-1, tf.int32))
  with open(tmp_path / "eval" / "results.json") as f:
    results = json.load(f)
  miou, iou, _ = reference_metrics.numpy_miou(gt // DIV, pred // DIV, SHAPES.num_classes,
                                              SHAPES.ignore_label)
  assert np.isnan(iou[4]) and iou[2] == 0  # ground in neither, triangle only predicted
  assert results["mIoU"] == pytest.approx(100 * miou, abs=1e-9)
  assert results["per_class_IoU"] == pytest.approx(
      {name: 100 * iou[c] for c, name in enumerate(SHAPES.class_names)
       if not np.isnan(iou[c])}, abs=1e-9)
  things = [c for c, thing in enumerate(SHAPES.is_thing) if thing]
  stats = reference_metrics.cocoeval_ap(ap_images, things, reference_metrics.SCENE_SHAPE,
                                        str(tmp_path))
  assert 0 < stats[0] < 1
  assert [results["AP"], results["AP50"], results["AP75"]] == pytest.approx(
      list(100 * stats[:3]), abs=1e-9)


def test_evaluator_rejects_coco_writing_without_panoptic_results(tmp_path):
  strategy = tf.distribute.get_strategy()
  post = _SemanticPassThrough(SHAPES.is_thing, DIV, SHAPES.ignore_label)
  with pytest.raises(ValueError, match="write_predictions"):
    PanopticEvaluator(strategy, lambda images, training: {}, post, None, SHAPES,
                      str(tmp_path), tf.Variable(0, dtype=tf.int64), write_predictions=True)
