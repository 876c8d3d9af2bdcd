"""Mask-wise merging against a numpy loop of Algorithm 1."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess.mask_merging import MaskWiseMergingPostprocessor

IS_THING = (True, True, False, False)
DIVISOR = 100
IGNORE = 255


def _numpy_merge(class_logits, mask_logits, conf_threshold=0.3, mask_threshold=0.5):
  """Algorithm 1, one image: sorted loop, unclaimed pixels only."""
  probs = 1.0 / (1.0 + np.exp(-class_logits[:, :len(IS_THING)]))
  classes = probs.argmax(-1)
  scores = probs.max(-1)
  masks = 1.0 / (1.0 + np.exp(-mask_logits)) > mask_threshold       # [H, W, N]
  semantic = np.full(masks.shape[:2], IGNORE)
  instance = np.zeros(masks.shape[:2], np.int64)
  claimed = np.zeros(masks.shape[:2], bool)
  for i in np.argsort(-scores, kind="stable"):
    if scores[i] < conf_threshold:
      continue
    mine = masks[..., i] & ~claimed
    claimed |= mine
    semantic[mine] = classes[i]
    if IS_THING[classes[i]]:
      instance[mine] = i + 1
  return semantic, instance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_loop(seed):
  rng = np.random.default_rng(seed)
  batch, slots, h, w = 2, 6, 8, 10
  class_logits = rng.normal(0, 2, size=(batch, slots, len(IS_THING) + 1))
  mask_logits = rng.normal(0, 2, size=(batch, h, w, slots))
  post = MaskWiseMergingPostprocessor(is_thing=IS_THING, label_divisor=DIVISOR,
                                      ignore_label=IGNORE)
  out = post({common.PRED_CLASS_LOGITS: tf.constant(class_logits, tf.float32),
              common.PRED_MASK_LOGITS: tf.constant(mask_logits, tf.float32)}, (h, w))
  for b in range(batch):
    semantic, instance = _numpy_merge(class_logits[b], mask_logits[b])
    np.testing.assert_array_equal(out[common.SEMANTIC][b].numpy(), semantic)
    np.testing.assert_array_equal(out[common.INSTANCE][b].numpy(), instance)
    np.testing.assert_array_equal(out[common.PANOPTIC][b].numpy(),
                                  semantic * DIVISOR + instance)
    # Areas and classes of the surviving slots.
    slot_of_pixel = np.where(instance > 0, instance - 1, -1)
    areas = out[common.SEGMENT_AREAS][b].numpy()
    for i in range(slots):
      if IS_THING[int(np.argmax(class_logits[b, i, :4]))]:
        assert areas[i] == (slot_of_pixel == i).sum()
    assert areas.sum() == (semantic != IGNORE).sum()
    assert ((out[common.SEGMENT_CLASSES][b].numpy() >= 0) == (areas > 0)).all()


def test_higher_score_wins_overlap_and_low_confidence_is_skipped():
  # Slot 0: thing class 0 at 0.6, slot 1: stuff class 2 at 0.9 (wins the overlap),
  # slot 2: 0.2 < 0.3 (skipped although its mask covers everything).
  def logit(p):
    return np.log(p / (1 - p))
  class_logits = np.full((1, 3, 5), -10.0)
  class_logits[0, 0, 0] = logit(0.6)
  class_logits[0, 1, 2] = logit(0.9)
  class_logits[0, 2, 1] = logit(0.2)
  masks = np.full((1, 2, 3, 3), -5.0)
  masks[0, :, :2, 0] = 5.0            # slot 0: columns 0-1
  masks[0, :, 1:, 1] = 5.0            # slot 1: columns 1-2
  masks[0, :, :, 2] = 5.0
  post = MaskWiseMergingPostprocessor(is_thing=IS_THING, label_divisor=DIVISOR,
                                      ignore_label=IGNORE)
  out = post({common.PRED_CLASS_LOGITS: tf.constant(class_logits, tf.float32),
              common.PRED_MASK_LOGITS: tf.constant(masks, tf.float32)}, (2, 3))
  np.testing.assert_array_equal(out[common.PANOPTIC][0].numpy(),
                                [[1, 200, 200], [1, 200, 200]])
  np.testing.assert_array_equal(out[common.SEGMENT_CLASSES][0].numpy(), [0, 2, -1])
  np.testing.assert_array_equal(out[common.SEGMENT_AREAS][0].numpy(), [2, 4, 0])


def test_compiles_with_xla():
  post = MaskWiseMergingPostprocessor(is_thing=IS_THING, label_divisor=DIVISOR,
                                      ignore_label=IGNORE)
  outputs = {common.PRED_CLASS_LOGITS: tf.random.normal([2, 5, 5]),
             common.PRED_MASK_LOGITS: tf.random.normal([2, 4, 4, 5])}
  eager = post(outputs, (8, 8))
  compiled = tf.function(lambda o: post(o, (8, 8)), jit_compile=True)(outputs)
  for key in (common.PANOPTIC, common.SEGMENT_AREAS, common.SEGMENT_CLASSES):
    np.testing.assert_array_equal(compiled[key].numpy(), eager[key].numpy())


@pytest.mark.parametrize("kwargs,match", [
    (dict(is_thing=[]), "is_thing is empty"),
    (dict(ignore_label=1), "ignore_label 1 must be >= num_classes"),
    (dict(label_divisor=0), "label_divisor must be positive"),
    (dict(mask_threshold=1.0), "mask_threshold must be in"),
    (dict(min_area=-1), "min_area must be >= 0"),
    (dict(class_activation="relu"), "class_activation must be one of"),
])
def test_bad_configuration_is_named(kwargs, match):
  args = dict(is_thing=IS_THING, label_divisor=DIVISOR, ignore_label=IGNORE)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    MaskWiseMergingPostprocessor(**args)
