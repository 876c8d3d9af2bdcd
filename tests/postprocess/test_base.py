"""The postprocessor contract: declared results, output keys, model checks; semantic argmax."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess import base
from deeplab_panoptic.postprocess.mask_merging import MaskWiseMergingPostprocessor
from deeplab_panoptic.postprocess.maskformer_merging import MaskFormerMergingPostprocessor
from deeplab_panoptic.postprocess.panoptic import PixelwisePanopticPostprocessor
from deeplab_panoptic.postprocess.semantic import SemanticPostprocessor

IS_THING = (True, False, False)
DIV, IGNORE = 100, 255
PANOPTIC_KEYS = {common.PANOPTIC, common.SEMANTIC, common.INSTANCE, common.SEGMENT_CLASSES,
                 common.SEGMENT_SCORES, common.SEGMENT_AREAS}


@pytest.mark.parametrize("cls", [PixelwisePanopticPostprocessor, MaskWiseMergingPostprocessor,
                                 MaskFormerMergingPostprocessor])
def test_mask_postprocessors_return_exactly_their_declared_keys(cls):
  post = cls(is_thing=IS_THING, label_divisor=DIV, ignore_label=IGNORE)
  assert post.results == {"panoptic", "semantic", "instance"}
  assert set(post.output_keys) == PANOPTIC_KEYS
  rng = np.random.default_rng(0)
  outputs = {common.PRED_CLASS_LOGITS: tf.constant(rng.normal(size=(2, 5, 4)), tf.float32),
             common.PRED_MASK_LOGITS: tf.constant(rng.normal(size=(2, 4, 4, 5)), tf.float32)}
  result = post(outputs, (8, 8))
  assert set(result) == set(post.output_keys)
  post.check_model_outputs(outputs)
  with pytest.raises(ValueError, match="set NUM_CLASSES"):
    post.check_model_outputs({**outputs, common.PRED_CLASS_LOGITS: tf.zeros([1, 5, 6])})
  with pytest.raises(ValueError, match="does not give"):
    post.check_model_outputs({common.PRED_SEMANTIC_LOGITS: tf.zeros([1, 4, 4, 3])})


def test_semantic_postprocessor_is_argmax_of_resized_logits():
  post = SemanticPostprocessor(is_thing=IS_THING, label_divisor=DIV, ignore_label=IGNORE)
  assert post.results == {"semantic"} and post.output_keys == [common.SEMANTIC]
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  # At the logits' own size: a plain per-pixel argmax (numpy).
  same = post({common.PRED_SEMANTIC_LOGITS: tf.constant(logits)}, (3, 4))
  np.testing.assert_array_equal(same[common.SEMANTIC].numpy(), np.argmax(logits, -1))
  # x2 with half-pixel centres: output pixel (2i + 1, 2j + 1) interpolates input
  # (i + 0.25, j + 0.25) away from the border -- worked by hand in numpy.
  up = post({common.PRED_SEMANTIC_LOGITS: tf.constant(logits)}, (6, 8))[common.SEMANTIC]
  i, j = 1, 2
  interp = (0.75 * 0.75 * logits[:, i, j] + 0.75 * 0.25 * logits[:, i, j + 1]
            + 0.25 * 0.75 * logits[:, i + 1, j] + 0.25 * 0.25 * logits[:, i + 1, j + 1])
  np.testing.assert_array_equal(up.numpy()[:, 2 * i + 1, 2 * j + 1], np.argmax(interp, -1))
  post.check_model_outputs({common.PRED_SEMANTIC_LOGITS: tf.constant(logits)})
  with pytest.raises(ValueError, match="predicts 4 classes but the dataset has 3"):
    post.check_model_outputs({common.PRED_SEMANTIC_LOGITS: tf.zeros([1, 2, 2, 4])})
  with pytest.raises(ValueError, match="does not give"):
    post.check_model_outputs({common.PRED_CLASS_LOGITS: tf.zeros([1, 2, 4])})


def test_result_declaration_helpers():
  assert base.result_outputs({"semantic"}) == [common.SEMANTIC]
  assert base.result_outputs({"instance"}) == [
      common.INSTANCE, common.SEGMENT_CLASSES, common.SEGMENT_SCORES]
  assert base.map_void_values({"panoptic", "semantic"}, DIV, IGNORE) == {
      common.PANOPTIC: IGNORE * DIV, common.SEMANTIC: IGNORE}
  with pytest.raises(ValueError, match="non-empty subset"):
    base.check_results("X", {"depth"})

  class Undeclared(base.Postprocessor):
    def predicted_classes(self, outputs):
      return 0

    def __call__(self, outputs, target_size):
      return {}

  with pytest.raises(ValueError, match="Undeclared declares results"):
    Undeclared(IS_THING, DIV, IGNORE)
  with pytest.raises(ValueError, match="ignore_label"):
    SemanticPostprocessor(is_thing=IS_THING, label_divisor=DIV, ignore_label=1)
