"""Mask2Former's semantic and instance inference against numpy on hand-sized inputs."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess import base
from deeplab_panoptic.postprocess.mask_merging import MaskWiseMergingPostprocessor
from deeplab_panoptic.postprocess.mask_results import MaskResultsPostprocessor
from deeplab_panoptic.postprocess.mask_results import instance_inference
from deeplab_panoptic.postprocess.mask_results import semantic_inference
from deeplab_panoptic.postprocess.maskformer_merging import MaskFormerMergingPostprocessor
from deeplab_panoptic.postprocess.panoptic import PixelwisePanopticPostprocessor

IS_THING = (True, False, True)          # classes 0 and 2 are things, 1 is stuff
DIV, IGNORE = 100, 255


# ------------------------------------------------------------------ numpy reference
def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_class_probs(class_logits, activation):
  num_classes = class_logits.shape[-1] - 1
  if activation == "softmax":
    return _softmax(class_logits, -1)[..., :num_classes]
  return _sigmoid(class_logits[..., :num_classes])


def np_mask_probs(mask_logits, activation):
  return _softmax(mask_logits, -1) if activation == "softmax" else _sigmoid(mask_logits)


def np_semantic(class_probs, mask_probs):
  """Loops over pixels: argmax_c sum_q p(c|q) m_q(pixel)."""
  batch, height, width, _ = mask_probs.shape
  out = np.zeros((batch, height, width), np.int64)
  for b in range(batch):
    for i in range(height):
      for j in range(width):
        out[b, i, j] = np.argmax(mask_probs[b, i, j] @ class_probs[b])
  return out


def np_instances(class_probs, mask_probs, is_thing, k, threshold=0.5):
  """Per image: sort the thing (slot, class) pairs, keep k, score = p * mean inside."""
  masks, classes, scores = [], [], []
  for b in range(class_probs.shape[0]):
    pairs = [(-class_probs[b, q, c], q, c) for q in range(class_probs.shape[1])
             for c in range(class_probs.shape[2]) if is_thing[c]]
    pairs.sort()  # descending probability, then lower slot, then lower class
    m, cl, sc = [], [], []
    for neg_p, q, c in pairs[:k]:
      probs = mask_probs[b, :, :, q]
      inside = probs > threshold
      mean = probs[inside].mean() if inside.any() else 0.0
      m.append(inside)
      cl.append(c)
      sc.append(-neg_p * mean)
    masks.append(np.stack(m, -1))
    classes.append(cl)
    scores.append(sc)
  return np.stack(masks), np.array(classes), np.array(scores)


def _outputs(seed, batch=2, slots=4, size=(3, 5), num_classes=3):
  rng = np.random.default_rng(seed)
  class_logits = rng.normal(scale=2.0, size=(batch, slots, num_classes + 1))
  mask_logits = rng.normal(scale=3.0, size=(batch,) + size + (slots,))
  return class_logits.astype(np.float32), mask_logits.astype(np.float32)


def _tf(class_logits, mask_logits):
  return {common.PRED_CLASS_LOGITS: tf.constant(class_logits),
          common.PRED_MASK_LOGITS: tf.constant(mask_logits)}


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("inner,class_act,mask_act", [
    (PixelwisePanopticPostprocessor, "softmax", "softmax"),        # MaX / kMaX
    (MaskFormerMergingPostprocessor, "softmax", "softmax"),        # CMT
    (MaskWiseMergingPostprocessor, "sigmoid", "sigmoid"),          # Panoptic SegFormer
])
def test_results_follow_the_family_activations_and_equal_numpy(inner, class_act, mask_act):
  class_logits, mask_logits = _outputs(0)
  post = MaskResultsPostprocessor(is_thing=IS_THING, label_divisor=DIV, ignore_label=IGNORE,
                                  panoptic_postprocessor=inner, num_instances=5)
  assert post.class_activation == class_act and post.mask_activation == mask_act
  assert post.results == {"panoptic", "semantic", "instance_masks"}
  result = post(_tf(class_logits, mask_logits), (3, 5))
  assert set(result) == set(post.output_keys)
  cp = np_class_probs(class_logits, class_act)
  mp = np_mask_probs(mask_logits, mask_act)
  np.testing.assert_array_equal(result[common.SEMANTIC].numpy(), np_semantic(cp, mp))
  masks, classes, scores = np_instances(cp, mp, IS_THING, 5)
  np.testing.assert_array_equal(result[common.INSTANCE_MASKS].numpy(), masks)
  np.testing.assert_array_equal(result[common.INSTANCE_CLASSES].numpy(), classes)
  np.testing.assert_allclose(result[common.INSTANCE_SCORES].numpy(), scores, rtol=1e-5,
                             atol=1e-7)
  # The panoptic results are the wrapped postprocessor's, unchanged.
  plain = inner(is_thing=IS_THING, label_divisor=DIV, ignore_label=IGNORE)(
      _tf(class_logits, mask_logits), (3, 5))
  for key in (common.PANOPTIC, common.SEGMENT_CLASSES, common.SEGMENT_SCORES,
              common.SEGMENT_AREAS):
    np.testing.assert_array_equal(result[key].numpy(), plain[key].numpy())


def test_sigmoid_masks_of_remax_are_read_as_sigmoid():
  """ReMaX's PixelwisePanopticPostprocessor(mask_activation='sigmoid')."""
  class_logits, mask_logits = _outputs(1)

  def remax(**kw):
    return PixelwisePanopticPostprocessor(mask_activation="sigmoid", **kw)

  post = MaskResultsPostprocessor(is_thing=IS_THING, label_divisor=DIV, ignore_label=IGNORE,
                                  panoptic_postprocessor=remax, num_instances=3)
  result = post(_tf(class_logits, mask_logits), (3, 5))
  cp, mp = np_class_probs(class_logits, "softmax"), np_mask_probs(mask_logits, "sigmoid")
  np.testing.assert_array_equal(result[common.SEMANTIC].numpy(), np_semantic(cp, mp))
  np.testing.assert_allclose(result[common.INSTANCE_SCORES].numpy(),
                             np_instances(cp, mp, IS_THING, 3)[2], rtol=1e-5)


def test_semantic_hand_worked_ties_and_void():
  """Two slots, two pixels; class probabilities given directly (rows sum < 1: void)."""
  class_probs = np.array([[[0.5, 0.5, 0.0],      # slot 0: tie between classes 0 and 1
                           [0.0, 0.1, 0.1]]], np.float32)  # slot 1: mostly void
  mask_probs = np.array([[[[1.0, 0.0],           # pixel 0: only slot 0 -> tie -> class 0
                           [0.2, 1.0]]]], np.float32)  # pixel 1: 0.1+0 vs 0.1+0.1 -> class 1
  # pixel 1: c0 = 0.2*0.5 = 0.1, c1 = 0.2*0.5 + 0.1 = 0.2, c2 = 0.1 -> class 1
  got = semantic_inference(tf.constant(class_probs), tf.constant(mask_probs)).numpy()
  np.testing.assert_array_equal(got, [[[0, 1]]])


def test_instances_hand_worked_stuff_excluded_empty_mask_and_ties():
  # 2 slots x 3 classes; class 1 is stuff and has the highest probability of all.
  class_probs = np.array([[[0.3, 0.9, 0.3],      # slot 0: stuff 0.9; things tie at 0.3
                           [0.6, 0.0, 0.1]]], np.float32)
  # 1 x 2 pixels; slot 0 covers pixel 0 (0.8), slot 1 covers nothing.
  mask_probs = np.array([[[[0.8, 0.4], [0.2, 0.5]]]], np.float32)
  masks, classes, scores = [t.numpy() for t in instance_inference(
      tf.constant(class_probs), tf.constant(mask_probs), IS_THING, 4, 0.5)]
  # Order: (1, 0) 0.6; (0, 0) 0.3 and (0, 2) 0.3 tie -> class 0 first; (1, 2) 0.1.
  np.testing.assert_array_equal(classes, [[0, 0, 2, 2]])
  np.testing.assert_array_equal(masks[0, 0], [[False, True, True, False],
                                              [False, False, False, False]])
  # Slot 1's mask is empty (0.4 and 0.5 are not > 0.5): score 0. Slot 0's mean
  # inside its mask is 0.8.
  np.testing.assert_allclose(scores, [[0.0, 0.3 * 0.8, 0.3 * 0.8, 0.0]], rtol=1e-6)


def test_jit_compiled_equals_eager():
  class_logits, mask_logits = _outputs(2, size=(4, 4))
  post = MaskResultsPostprocessor(is_thing=IS_THING, label_divisor=DIV, ignore_label=IGNORE,
                                  panoptic_postprocessor=MaskFormerMergingPostprocessor,
                                  num_instances=6)
  eager = post(_tf(class_logits, mask_logits), (8, 8))
  compiled = tf.function(lambda o: post(o, (8, 8)), jit_compile=True)(
      _tf(class_logits, mask_logits))
  for key in post.output_keys:
    if eager[key].dtype.is_floating:
      np.testing.assert_allclose(compiled[key].numpy(), eager[key].numpy(), rtol=1e-5)
    else:
      np.testing.assert_array_equal(compiled[key].numpy(), eager[key].numpy(), err_msg=key)


def test_resized_masks_are_read_at_the_output_size():
  """x2 upsampling: the numpy reference gets tf.image.resize's logits (half-pixel)."""
  class_logits, mask_logits = _outputs(3, batch=1, size=(2, 3))
  post = MaskResultsPostprocessor(is_thing=IS_THING, label_divisor=DIV, ignore_label=IGNORE,
                                  panoptic_postprocessor=MaskFormerMergingPostprocessor,
                                  num_instances=4)
  result = post(_tf(class_logits, mask_logits), (4, 6))
  resized = tf.image.resize(mask_logits, (4, 6), method="bilinear").numpy()
  cp, mp = np_class_probs(class_logits, "softmax"), np_mask_probs(resized, "softmax")
  np.testing.assert_array_equal(result[common.SEMANTIC].numpy(), np_semantic(cp, mp))
  np.testing.assert_array_equal(result[common.INSTANCE_MASKS].numpy(),
                                np_instances(cp, mp, IS_THING, 4)[0])


def test_declarations_switches_and_errors():
  kw = dict(is_thing=IS_THING, label_divisor=DIV, ignore_label=IGNORE)
  legacy = MaskResultsPostprocessor(**kw, semantic_from_masks=False, instance_masks=False)
  assert legacy.results == {"panoptic", "semantic", "instance"}
  only = MaskResultsPostprocessor(**kw, panoptic_postprocessor=None, class_activation="softmax",
                                  mask_activation="sigmoid", align_corners=False)
  assert only.results == {"semantic", "instance_masks"}
  assert base.result_outputs(only.results) == [
      common.SEMANTIC, common.INSTANCE_MASKS, common.INSTANCE_CLASSES, common.INSTANCE_SCORES]
  outputs = _tf(*_outputs(4))
  with pytest.raises(ValueError, match=r"num_instances = 9 must be in \[1, 4 slots x 2"):
    MaskResultsPostprocessor(**kw, num_instances=9).check_model_outputs(outputs)
  with pytest.raises(ValueError, match="mask_activation is needed"):
    MaskResultsPostprocessor(**kw, panoptic_postprocessor=None, class_activation="softmax")
  with pytest.raises(ValueError, match="class_activation must be one of"):
    MaskResultsPostprocessor(**kw, class_activation="relu")
  with pytest.raises(ValueError, match="need thing classes"):
    MaskResultsPostprocessor(is_thing=(False, False), label_divisor=DIV, ignore_label=IGNORE)


def test_semantic_only_without_a_panoptic_postprocessor():
  """Mask2Former's semantic recipes: every class stuff, no panoptic or instance result."""
  class_logits, mask_logits = _outputs(5)
  post = MaskResultsPostprocessor(
      is_thing=(False, False, False), label_divisor=DIV, ignore_label=IGNORE,
      panoptic_postprocessor=None, instance_masks=False, class_activation="softmax",
      mask_activation="sigmoid", align_corners=False)
  assert post.results == {"semantic"}
  post.check_model_outputs(_tf(class_logits, mask_logits))
  result = post(_tf(class_logits, mask_logits), (3, 5))
  assert list(result) == [common.SEMANTIC]
  np.testing.assert_array_equal(
      result[common.SEMANTIC].numpy(),
      np_semantic(np_class_probs(class_logits, "softmax"), np_mask_probs(mask_logits, "sigmoid")))
