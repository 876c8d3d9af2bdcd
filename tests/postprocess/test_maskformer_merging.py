"""MaskFormer mask-wise merging: a hand-worked image and MaskFormer's reference loop."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess.maskformer_merging import MaskFormerMergingPostprocessor

# 0 person (thing), 1 car (thing), 2 sky (stuff), 3 grass (stuff); 4 is void.
IS_THING = (True, True, False, False)
NUM_CLASSES = len(IS_THING)
DIVISOR = 100
IGNORE = 255
VOID = IGNORE * DIVISOR


def _post(**kwargs):
  return MaskFormerMergingPostprocessor(is_thing=IS_THING, label_divisor=DIVISOR,
                                        ignore_label=IGNORE, **kwargs)


def _run(post, class_logits, mask_logits, size, jit=False):
  outputs = {common.PRED_CLASS_LOGITS: tf.constant(class_logits, tf.float32),
             common.PRED_MASK_LOGITS: tf.constant(mask_logits, tf.float32)}
  fn = tf.function(lambda o: post(o, size), jit_compile=True) if jit else (
      lambda o: post(o, size))
  return {k: v.numpy() for k, v in fn(outputs).items()}


def _class_logits(cls, score):
  """Logits whose softmax puts ``score`` on ``cls`` and spreads the rest evenly."""
  probs = np.full(NUM_CLASSES + 1, (1.0 - score) / NUM_CLASSES)
  probs[cls] = score
  return np.log(probs)


def _logit(p):
  return np.log(p / (1.0 - p))


def _hand_example():
  """7 slots on a 4x4 image; sigmoid masks with probability 0.01 where unset.

  slot 0  person 0.95  p=0.9 rows 0-1 x cols 0-1        -> person instance 1
  slot 1  sky    0.90  p=0.8 rows 0-1 x cols 2-3, (1,1) -> wins 4 of its 5 mask
                                                          pixels: 4/5 = 0.8, kept
  slot 2  car    0.60  p=0.9 rows 2-3 x cols 0-1        -> score <= 0.8: dropped
  slot 3  car    0.85  p=0.7 rows 2-3 x cols 0-1        -> wins only col 0 (0.595
                                                          < 0.81 in col 1): 2/4,
                                                          dropped, col 0 void
  slot 4  grass  0.90  p=0.9 (2,1) (2,2) (3,1), 0.4 (3,2) -> wins all four, 4/3;
                                                          (3,2) has p < 0.5: void
  slot 5  sky    0.90  p=0.9 rows 2-3 x col 3           -> merges with slot 1
  slot 6  void   0.90  p=0.99 everywhere                -> argmax void: dropped
  """
  class_logits = np.stack([
      _class_logits(0, 0.95), _class_logits(2, 0.9), _class_logits(1, 0.6),
      _class_logits(1, 0.85), _class_logits(3, 0.9), _class_logits(2, 0.9),
      _class_logits(NUM_CLASSES, 0.9)])[np.newaxis]
  probs = np.full((4, 4, 7), 0.01)
  probs[0:2, 0:2, 0] = 0.9
  probs[0:2, 2:4, 1] = 0.8
  probs[1, 1, 1] = 0.8
  probs[2:4, 0:2, 2] = 0.9
  probs[2:4, 0:2, 3] = 0.7
  probs[2, 1, 4] = probs[2, 2, 4] = probs[3, 1, 4] = 0.9
  probs[3, 2, 4] = 0.4
  probs[2:4, 3, 5] = 0.9
  probs[..., 6] = 0.99
  return class_logits, _logit(probs)[np.newaxis]


def test_hand_worked_example():
  class_logits, mask_logits = _hand_example()
  out = _run(_post(mask_activation="sigmoid"), class_logits, mask_logits, (4, 4))
  np.testing.assert_array_equal(out[common.PANOPTIC][0], [
      [1, 1, 200, 200],
      [1, 1, 200, 200],
      [VOID, 300, 300, 200],
      [VOID, 300, VOID, 200]])
  np.testing.assert_array_equal(out[common.SEMANTIC][0], [
      [0, 0, 2, 2], [0, 0, 2, 2], [IGNORE, 3, 3, 2], [IGNORE, 3, IGNORE, 2]])
  np.testing.assert_array_equal(out[common.INSTANCE][0], [
      [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(out[common.SEGMENT_CLASSES][0], [0, 2, -1, -1, 3, 2, -1])
  np.testing.assert_array_equal(out[common.SEGMENT_AREAS][0], [4, 4, 0, 0, 3, 2, 0])
  np.testing.assert_allclose(out[common.SEGMENT_SCORES][0],
                             [0.95, 0.9, 0.6, 0.85, 0.9, 0.9, 0.025], rtol=1e-5)


def test_hand_worked_example_variants():
  class_logits, mask_logits = _hand_example()
  # MaskFormer's released code: the pixel of slot 4 with p = 0.4 stays grass.
  out = _run(_post(mask_activation="sigmoid", clip_to_mask_threshold=False),
             class_logits, mask_logits, (4, 4))
  assert out[common.PANOPTIC][0, 3, 2] == 300
  np.testing.assert_array_equal(out[common.SEGMENT_AREAS][0], [4, 4, 0, 0, 4, 2, 0])
  # Area filters: person (4 px) < 5 goes; sky is 4 + 2 = 6 px as one segment and
  # stays although slot 5 alone has 2 < 4; grass (3 px) goes.
  out = _run(_post(mask_activation="sigmoid", thing_area_threshold=5,
                   stuff_area_threshold=4), class_logits, mask_logits, (4, 4))
  np.testing.assert_array_equal(out[common.PANOPTIC][0], [
      [VOID, VOID, 200, 200],
      [VOID, VOID, 200, 200],
      [VOID, VOID, VOID, 200],
      [VOID, VOID, VOID, 200]])
  np.testing.assert_array_equal(out[common.SEGMENT_CLASSES][0], [-1, 2, -1, -1, -1, 2, -1])
  # Lower thresholds: slot 2 (car 0.6) is kept but wins no pixel (0.6 * 0.9 <
  # 0.85 * 0.7 in col 0, < 0.9 * 0.9 in col 1), so it still goes; slot 3's 2/4
  # now passes the overlap ratio: car instance 4 in col 0.
  out = _run(_post(mask_activation="sigmoid", object_mask_threshold=0.5,
                   overlap_threshold=0.5), class_logits, mask_logits, (4, 4))
  np.testing.assert_array_equal(out[common.PANOPTIC][0, 2:], [
      [104, 300, 300, 200], [104, 300, VOID, 200]])
  np.testing.assert_array_equal(out[common.SEGMENT_CLASSES][0], [0, 2, -1, 1, 3, 2, -1])
  np.testing.assert_array_equal(out[common.SEGMENT_AREAS][0], [4, 4, 0, 2, 3, 2, 0])


def test_softmax_overlap_drop():
  """Softmax over 3 slots on a 1x4 image.

  slot 0  person 0.99  p = 0.47 0.47 0.05 0.9
  slot 1  car    0.82  p = 0.52 0.52 0.9  0.05  -> loses pixels 0-1 (0.99 * 0.47 >
                                                   0.82 * 0.52): 1/3, dropped
  slot 2  void   0.90  p = 0.01 0.01 0.05 0.05
  Slot 0 wins pixels 0, 1, 3 against a binary mask of 1 pixel (3/1, kept), but
  only pixel 3 has p >= 0.5.
  """
  class_logits = np.stack([_class_logits(0, 0.99), _class_logits(1, 0.82),
                           _class_logits(NUM_CLASSES, 0.9)])[np.newaxis]
  probs = np.array([[0.47, 0.52, 0.01], [0.47, 0.52, 0.01], [0.05, 0.9, 0.05],
                    [0.9, 0.05, 0.05]])
  mask_logits = np.log(probs)[np.newaxis, np.newaxis]                   # [1, 1, 4, 3]
  out = _run(_post(), class_logits, mask_logits, (1, 4))
  np.testing.assert_array_equal(out[common.PANOPTIC][0], [[VOID, VOID, VOID, 1]])
  np.testing.assert_array_equal(out[common.SEGMENT_AREAS][0], [1, 0, 0])
  out = _run(_post(clip_to_mask_threshold=False), class_logits, mask_logits, (1, 4))
  np.testing.assert_array_equal(out[common.PANOPTIC][0], [[1, 1, VOID, 1]])
  out = _run(_post(overlap_threshold=0.3), class_logits, mask_logits, (1, 4))
  np.testing.assert_array_equal(out[common.PANOPTIC][0], [[VOID, VOID, 102, 1]])
  np.testing.assert_array_equal(out[common.SEGMENT_CLASSES][0], [0, 1, -1])


def _reference(class_logits, mask_logits, activation, object_mask_threshold=0.8,
               overlap_threshold=0.8, mask_threshold=0.5, clip=True, thing_area=0,
               stuff_area=0):
  """MaskFormer's panoptic_inference for one image, as its loop over kept slots.

  Args:
    class_logits: [N, K + 1]; mask_logits: [H, W, N] (already at the output size).

  Returns:
    panoptic [H, W], per-slot classes [N] (-1 if dropped) and areas [N], and
    (number of slots dropped by the overlap ratio, number of stuff merges).
  """
  z = class_logits.astype(np.float64)
  probs = np.exp(z - z.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  scores, labels = probs.max(-1), probs.argmax(-1)
  m = mask_logits.astype(np.float64)
  if activation == "sigmoid":
    mask_probs = 1.0 / (1.0 + np.exp(-m))
  else:
    mask_probs = np.exp(m - m.max(-1, keepdims=True))
    mask_probs /= mask_probs.sum(-1, keepdims=True)
  num_slots = z.shape[0]
  keep = np.flatnonzero((labels != NUM_CLASSES) & (scores > object_mask_threshold))
  panoptic = np.full(m.shape[:2], VOID)
  classes = np.full(num_slots, -1)
  areas = np.zeros(num_slots, np.int64)
  dropped_by_overlap = merges = 0
  if keep.size == 0:
    return panoptic, classes, areas, (0, 0)
  prob_masks = scores[keep] * mask_probs[..., keep]                   # [H, W, kept]
  mask_ids = prob_masks.argmax(-1)
  stuff_seen = set()
  for j, k in enumerate(keep):
    cls = int(labels[k])
    mask_area = (mask_ids == j).sum()
    original_area = (mask_probs[..., k] >= mask_threshold).sum()
    mask = mask_ids == j
    if clip:
      mask = mask & (mask_probs[..., k] >= mask_threshold)
    if mask_area > 0 and original_area > 0 and mask.sum() > 0:
      if mask_area / original_area < overlap_threshold:
        dropped_by_overlap += 1
        continue
      if IS_THING[cls]:
        panoptic[mask] = cls * DIVISOR + k + 1
      else:
        merges += cls in stuff_seen
        stuff_seen.add(cls)
        panoptic[mask] = cls * DIVISOR
      classes[k] = cls
      areas[k] = mask.sum()
  # Area filter over panoptic segments.
  for segment in np.unique(panoptic):
    if segment == VOID:
      continue
    cls = segment // DIVISOR
    if (panoptic == segment).sum() < (thing_area if IS_THING[cls] else stuff_area):
      panoptic[panoptic == segment] = VOID
  for k in range(num_slots):
    if classes[k] >= 0:
      segment = classes[k] * DIVISOR + (k + 1 if IS_THING[classes[k]] else 0)
      if not (panoptic == segment).any():
        classes[k], areas[k] = -1, 0
  return panoptic, classes, areas, (dropped_by_overlap, merges)


def _random_inputs(rng, batch, slots, size):
  """Slots with a dominant class (sometimes void) and a noisy rectangle each."""
  h, w = size
  class_logits = rng.normal(0.0, 1.5, size=(batch, slots, NUM_CLASSES + 1))
  dominant = rng.integers(0, NUM_CLASSES + 1, size=(batch, slots))
  class_logits += 4.0 * np.eye(NUM_CLASSES + 1)[dominant]
  mask_logits = rng.normal(-2.0, 1.5, size=(batch, h, w, slots))
  for b in range(batch):
    for s in range(slots):
      y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
      y1, x1 = rng.integers(y0 + 2, h + 1), rng.integers(x0 + 2, w + 1)
      mask_logits[b, y0:y1, x0:x1, s] += rng.uniform(2.0, 6.0)
  return class_logits.astype(np.float32), mask_logits.astype(np.float32)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("kwargs", [
    {},
    {"object_mask_threshold": 0.5, "overlap_threshold": 0.6},
    {"clip": False},
    {"thing_area": 6, "stuff_area": 10},
])
def test_matches_maskformer_loop(activation, kwargs):
  post_kwargs = {
      "object_mask_threshold": kwargs.get("object_mask_threshold", 0.8),
      "overlap_threshold": kwargs.get("overlap_threshold", 0.8),
      "clip_to_mask_threshold": kwargs.get("clip", True),
      "thing_area_threshold": kwargs.get("thing_area", 0),
      "stuff_area_threshold": kwargs.get("stuff_area", 0),
  }
  post = _post(mask_activation=activation, **post_kwargs)
  batch, slots, size = 4, 8, (12, 10)
  dropped = merges = survivors = 0
  for seed in range(3):
    rng = np.random.default_rng(seed)
    class_logits, mask_logits = _random_inputs(rng, batch, slots, size)
    out = _run(post, class_logits, mask_logits, size)
    for b in range(batch):
      panoptic, classes, areas, (n_dropped, n_merges) = _reference(
          class_logits[b], mask_logits[b], activation, **kwargs)
      np.testing.assert_array_equal(out[common.PANOPTIC][b], panoptic)
      np.testing.assert_array_equal(out[common.SEMANTIC][b], panoptic // DIVISOR)
      np.testing.assert_array_equal(out[common.INSTANCE][b],
                                    np.where(panoptic == VOID, 0, panoptic % DIVISOR))
      np.testing.assert_array_equal(out[common.SEGMENT_CLASSES][b], classes)
      np.testing.assert_array_equal(out[common.SEGMENT_AREAS][b], areas)
      dropped += n_dropped
      merges += n_merges
      survivors += (classes >= 0).sum()
  # The random inputs exercise the branches of the loop. (With softmax masks the
  # overlap ratio hardly ever drops a slot: a pixel where p_k >= 0.5 goes to
  # another slot only if s_j p_j > s_k p_k with p_j <= 1 - p_k, so only where
  # p_k is barely above 0.5; test_softmax_overlap_drop covers that case.)
  assert merges > 0 and survivors > 10
  if activation == "sigmoid":
    assert dropped > 0


def test_no_kept_slot_gives_all_void():
  class_logits = np.zeros((2, 3, NUM_CLASSES + 1), np.float32)
  class_logits[0, :, NUM_CLASSES] = 5.0      # image 0: every slot is void
  class_logits[1, :, 0] = 1.0                # image 1: scores far below 0.8
  mask_logits = np.random.default_rng(0).normal(size=(2, 4, 4, 3))
  for activation in ("softmax", "sigmoid"):
    out = _run(_post(mask_activation=activation), class_logits, mask_logits, (4, 4))
    assert (out[common.PANOPTIC] == VOID).all()
    assert (out[common.SEMANTIC] == IGNORE).all()
    assert (out[common.SEGMENT_CLASSES] == -1).all()
    assert (out[common.SEGMENT_AREAS] == 0).all()


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_jit_compile_matches_eager(activation):
  rng = np.random.default_rng(7)
  class_logits, mask_logits = _random_inputs(rng, 2, 6, (5, 6))
  post = _post(mask_activation=activation, object_mask_threshold=0.5,
               stuff_area_threshold=3)
  eager = _run(post, class_logits, mask_logits, (10, 12))
  compiled = _run(post, class_logits, mask_logits, (10, 12), jit=True)
  assert (eager[common.SEGMENT_CLASSES] >= 0).any()
  for key in eager:
    if key == common.SEGMENT_SCORES:   # XLA's softmax may differ in the last ulp.
      np.testing.assert_allclose(compiled[key], eager[key], rtol=1e-5, err_msg=key)
    else:
      np.testing.assert_array_equal(compiled[key], eager[key], err_msg=key)


def test_rejects_bad_configuration():
  with pytest.raises(ValueError, match="mask_activation"):
    _post(mask_activation="relu")
  with pytest.raises(ValueError, match="ignore_label"):
    MaskFormerMergingPostprocessor(is_thing=IS_THING, label_divisor=DIVISOR,
                                   ignore_label=2)
  with pytest.raises(ValueError, match="mask_threshold"):
    _post(mask_threshold=0.0)
  with pytest.raises(ValueError, match="area thresholds"):
    _post(stuff_area_threshold=-1)
  post = _post()
  with pytest.raises(ValueError, match="num_classes"):
    post({common.PRED_CLASS_LOGITS: tf.zeros([1, 3, NUM_CLASSES]),
          common.PRED_MASK_LOGITS: tf.zeros([1, 4, 4, 3])}, (4, 4))
