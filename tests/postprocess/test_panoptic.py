"""Tests for the MaX-DeepLab pixel-wise panoptic postprocessor."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess import panoptic

# Two thing classes, two stuff classes.
IS_THING = (True, False, True, False)
NUM_CLASSES = len(IS_THING)
LABEL_DIVISOR = 100
IGNORE_LABEL = 255


def _bilinear_reference(x, out_h, out_w, align_corners):
  """Numpy bilinear resize of [B, h, w, N] (half-pixel centres or aligned corners)."""
  def coords(out_size, in_size):
    o = np.arange(out_size, dtype=np.float64)
    if align_corners:
      src = o * ((in_size - 1) / (out_size - 1)) if out_size > 1 else 0 * o
    else:
      src = (o + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0, in_size - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, src - lo

  y0, y1, ty = coords(out_h, x.shape[1])
  x0, x1, tx = coords(out_w, x.shape[2])
  top = x[:, y0] * (1 - ty)[None, :, None, None] + x[:, y1] * ty[None, :, None, None]
  return top[:, :, x0] * (1 - tx)[None, None, :, None] + top[:, :, x1] * tx[None, None, :, None]


def _reference(class_logits, mask_logits, size, class_threshold=0.7, pixel_threshold=0.4,
               thing_area=0, stuff_area=0, activation="softmax", over_enabled=True,
               align_corners=False):
  """Plain-loop implementation of MaX-DeepLab's pixel-wise merge."""
  batch, num_slots, _ = class_logits.shape
  height, width = size
  masks = _bilinear_reference(mask_logits.astype(np.float64), height, width, align_corners)
  panoptic_out = np.zeros((batch, height, width), np.int64)
  seg_classes = np.full((batch, num_slots), -1)
  seg_areas = np.zeros((batch, num_slots), np.int64)
  seg_scores = np.zeros((batch, num_slots))
  void_id = IGNORE_LABEL * LABEL_DIVISOR
  for b in range(batch):
    cls, score, enabled = [], [], []
    for s in range(num_slots):
      z = class_logits[b, s].astype(np.float64)
      p = np.exp(z - z.max())
      p /= p.sum()
      p = p[:NUM_CLASSES]
      cls.append(int(np.argmax(p)))
      score.append(float(p.max()))
      enabled.append(p.max() >= class_threshold)
    seg_scores[b] = score
    slot_of = np.full((height, width), -1)
    for i in range(height):
      for j in range(width):
        z = masks[b, i, j]
        top = int(np.argmax(z))
        if not enabled[top]:
          continue
        if activation == "sigmoid":
          conf = 1 / (1 + np.exp(-z[top]))
        else:
          pool = [s for s in range(num_slots) if enabled[s] or not over_enabled]
          conf = np.exp(z[top]) / sum(np.exp(z[s]) for s in pool)
        if conf > pixel_threshold:
          slot_of[i, j] = top
    # Panoptic id of each slot, then areas per panoptic id.
    ids = {s: cls[s] * LABEL_DIVISOR + (s + 1 if IS_THING[cls[s]] else 0)
           for s in range(num_slots)}
    pan = np.full((height, width), void_id)
    for i in range(height):
      for j in range(width):
        if slot_of[i, j] >= 0:
          pan[i, j] = ids[slot_of[i, j]]
    for seg_id in np.unique(pan):
      if seg_id == void_id:
        continue
      area = np.sum(pan == seg_id)
      limit = thing_area if IS_THING[seg_id // LABEL_DIVISOR] else stuff_area
      if area < limit:
        pan[pan == seg_id] = void_id
    for s in range(num_slots):
      area = int(np.sum((slot_of == s) & (pan == ids[s])))
      if area > 0:
        seg_classes[b, s] = cls[s]
        seg_areas[b, s] = area
    panoptic_out[b] = pan
  return panoptic_out, seg_classes, seg_scores, seg_areas


def _random_outputs(seed, batch=2, num_slots=7, h=5, w=6):
  rng = np.random.default_rng(seed)
  class_logits = rng.normal(size=(batch, num_slots, NUM_CLASSES + 1))
  # Make about half of the slots confident in one class, so both sides of the
  # 0.7 class threshold occur; stuff classes are chosen twice so stuff slots merge.
  confident = rng.random((batch, num_slots)) < 0.6
  chosen = rng.integers(0, NUM_CLASSES, size=(batch, num_slots))
  chosen[:, :2] = 1  # two stuff slots of class 1 in each image
  for b in range(batch):
    for s in range(num_slots):
      if confident[b, s] or s < 2:
        class_logits[b, s, chosen[b, s]] += 5.0
  mask_logits = 2.5 * rng.normal(size=(batch, h, w, num_slots))
  return {
      common.PRED_CLASS_LOGITS: tf.constant(class_logits, tf.float32),
      common.PRED_MASK_LOGITS: tf.constant(mask_logits, tf.float32),
  }


def _check(result, expected, atol_scores=1e-5):
  pan, classes, scores, areas = expected
  np.testing.assert_array_equal(result[common.PANOPTIC].numpy(), pan)
  np.testing.assert_array_equal(result[common.SEMANTIC].numpy(), pan // LABEL_DIVISOR)
  np.testing.assert_array_equal(result[common.INSTANCE].numpy(), pan % LABEL_DIVISOR)
  np.testing.assert_array_equal(result[common.SEGMENT_CLASSES].numpy(), classes)
  np.testing.assert_allclose(result[common.SEGMENT_SCORES].numpy(), scores, atol=atol_scores)
  np.testing.assert_array_equal(result[common.SEGMENT_AREAS].numpy(), areas)
  for key in (common.PANOPTIC, common.SEMANTIC, common.INSTANCE, common.SEGMENT_CLASSES,
              common.SEGMENT_AREAS):
    assert result[key].dtype == tf.int32, key


def _make(**kwargs):
  return panoptic.PixelwisePanopticPostprocessor(
      is_thing=IS_THING, label_divisor=LABEL_DIVISOR, ignore_label=IGNORE_LABEL, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(thing_area_threshold=6, stuff_area_threshold=20),
    dict(mask_activation="sigmoid", pixel_confidence_threshold=0.9, thing_area_threshold=3),
    dict(confidence_over_enabled_slots=False, class_threshold=0.5),
    dict(align_corners=True, stuff_area_threshold=15),
])
def test_matches_reference(kwargs):
  size = (11, 12)
  post = _make(**kwargs)
  ref_kwargs = dict(
      class_threshold=kwargs.get("class_threshold", 0.7),
      thing_area=kwargs.get("thing_area_threshold", 0),
      stuff_area=kwargs.get("stuff_area_threshold", 0),
      pixel_threshold=kwargs.get("pixel_confidence_threshold", 0.4),
      activation=kwargs.get("mask_activation", "softmax"),
      over_enabled=kwargs.get("confidence_over_enabled_slots", True),
      align_corners=kwargs.get("align_corners", False))
  for seed in range(2):
    outputs = _random_outputs(seed)
    expected = _reference(outputs[common.PRED_CLASS_LOGITS].numpy(),
                          outputs[common.PRED_MASK_LOGITS].numpy(), size, **ref_kwargs)
    _check(post(outputs, size), expected)
    # The test is only meaningful if it exercises both kept and dropped slots.
    assert np.any(expected[1] >= 0) and np.any(expected[1] < 0)


def test_area_filter_removes_segments():
  outputs = _random_outputs(0)
  size = (11, 12)
  thing_limit, stuff_limit = 8, 25
  unfiltered = _make()(outputs, size)
  filtered = _make(thing_area_threshold=thing_limit,
                   stuff_area_threshold=stuff_limit)(outputs, size)
  before = unfiltered[common.SEGMENT_CLASSES].numpy()
  after = filtered[common.SEGMENT_CLASSES].numpy()
  assert np.any((before >= 0) & (after < 0))
  # Image 0 has three stuff slots of class 1, each below the stuff limit but
  # together above it: the limit applies to the merged segment.
  areas = unfiltered[common.SEGMENT_AREAS].numpy()[0]
  class1 = before[0] == 1
  assert np.sum(class1) >= 2 and np.all(areas[class1] < stuff_limit)
  assert np.sum(areas[class1]) >= stuff_limit
  assert np.all(after[0][class1] == 1)
  void = IGNORE_LABEL * LABEL_DIVISOR
  pan = filtered[common.PANOPTIC].numpy()
  for seg_id in np.unique(pan):
    if seg_id == void:
      continue
    limit = thing_limit if IS_THING[seg_id // LABEL_DIVISOR] else stuff_limit
    assert np.sum(pan == seg_id) >= limit


def test_jit_compile_matches_eager():
  post = _make(thing_area_threshold=4, stuff_area_threshold=10)
  outputs = _random_outputs(5)
  size = (10, 12)
  compiled = tf.function(lambda o: post(o, size), jit_compile=True)
  eager = post(outputs, size)
  jitted = compiled(outputs)
  for key, value in eager.items():
    np.testing.assert_allclose(jitted[key].numpy(), value.numpy(), atol=1e-6, err_msg=key)
  expected = _reference(outputs[common.PRED_CLASS_LOGITS].numpy(),
                        outputs[common.PRED_MASK_LOGITS].numpy(), size,
                        thing_area=4, stuff_area=10)
  _check(jitted, expected)


def test_no_confident_slot_gives_all_void():
  outputs = _random_outputs(1)
  logits = np.zeros(outputs[common.PRED_CLASS_LOGITS].shape, np.float32)
  outputs[common.PRED_CLASS_LOGITS] = tf.constant(logits)  # uniform: score 0.2 < 0.7
  result = _make()(outputs, (8, 8))
  assert np.all(result[common.PANOPTIC].numpy() == IGNORE_LABEL * LABEL_DIVISOR)
  assert np.all(result[common.SEMANTIC].numpy() == IGNORE_LABEL)
  assert np.all(result[common.INSTANCE].numpy() == 0)
  assert np.all(result[common.SEGMENT_CLASSES].numpy() == -1)
  assert np.all(result[common.SEGMENT_AREAS].numpy() == 0)


def test_thing_instances_unique_and_stuff_instance_zero():
  result = _make()(_random_outputs(0), (11, 12))
  classes = result[common.SEGMENT_CLASSES].numpy()
  pan = result[common.PANOPTIC].numpy()
  for b in range(pan.shape[0]):
    for s in np.flatnonzero(classes[b] >= 0):
      seg_id = classes[b, s] * LABEL_DIVISOR + (s + 1 if IS_THING[classes[b, s]] else 0)
      assert np.any(pan[b] == seg_id)


def test_rejects_bad_configuration():
  with pytest.raises(ValueError, match="mask_activation"):
    _make(mask_activation="relu")
  post = panoptic.PixelwisePanopticPostprocessor(
      is_thing=IS_THING, label_divisor=5, ignore_label=IGNORE_LABEL)
  with pytest.raises(ValueError, match="label_divisor"):
    post(_random_outputs(0), (10, 12))
  outputs = _random_outputs(0)
  outputs[common.PRED_CLASS_LOGITS] = outputs[common.PRED_CLASS_LOGITS][..., :-1]
  with pytest.raises(ValueError, match="num_classes"):
    _make()(outputs, (10, 12))
