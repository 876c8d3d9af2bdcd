"""The SavedModel of a mask model with Mask2Former's results: instance masks and raw logits.

A tiny stand-in mask model (pooled image -> N mask logits at stride 4 and N class
logits) with ``MaskResultsPostprocessor`` is exported and loaded back:
``serve_logits`` returns exactly the model's outputs on the preprocessed input,
and ``serving_default`` returns the instance masks, classes, scores and the
semantic and panoptic maps the in-memory postprocessor gives, cropped and resized
(nearest) to each image's size.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.data.dataset_info import SHAPES
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.modeling import base as modeling_base
from deeplab_panoptic.postprocess.mask_results import MaskResultsPostprocessor
from deeplab_panoptic.postprocess.panoptic import PixelwisePanopticPostprocessor
from tests.pictures import disc_picture

NUM_SLOTS, INPUT_SIZE, NUM_INSTANCES = 6, (32, 32), 5


class _TinyMaskModel(modeling_base.SegmentationModel):
  """images [B, H, W, 3] -> class logits [B, N, C + 1], mask logits [B, H/4, W/4, N]."""

  def __init__(self):
    super().__init__()
    self.pool = keras.layers.AveragePooling2D(4)
    self.masks = keras.layers.Conv2D(NUM_SLOTS, 1, kernel_initializer=keras.initializers
                                     .RandomNormal(stddev=4.0, seed=1))
    self.classes = keras.layers.Dense(NUM_SLOTS * (SHAPES.num_classes + 1),
                                      kernel_initializer=keras.initializers
                                      .RandomNormal(stddev=3.0, seed=2))

  def call(self, images, training=None):
    features = self.pool(images)
    pooled = tf.reduce_mean(features, axis=[1, 2])
    class_logits = tf.reshape(self.classes(pooled), [-1, NUM_SLOTS, SHAPES.num_classes + 1])
    return {common.PRED_CLASS_LOGITS: class_logits,
            common.PRED_MASK_LOGITS: self.masks(features)}


def _inner(**kw):
  return PixelwisePanopticPostprocessor(class_threshold=0.0, pixel_confidence_threshold=0.0,
                                        **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mask_results_export")
  model = _TinyMaskModel()
  model(tf.zeros((1,) + INPUT_SIZE + (3,)))   # the module saves the built variables
  post = MaskResultsPostprocessor(is_thing=SHAPES.is_thing,
                                  label_divisor=SHAPES.label_divisor,
                                  ignore_label=SHAPES.ignore_label,
                                  panoptic_postprocessor=_inner, num_instances=NUM_INSTANCES)
  module = saved_model.PanopticExportModule(model, post, input_size=INPUT_SIZE,
                                            dataset_info=SHAPES)
  # Larger than the input: shrunk to fit, so the results are resized back.
  images = np.stack([disc_picture(48, 60, 1), disc_picture(48, 60, 2)])
  inputs, (rh, rw) = saved_model.fit_and_pad(tf.constant(images), INPUT_SIZE,
                                             *module._resize)  # pylint: disable=protected-access
  raw = model(inputs, training=False)
  results = post(raw, INPUT_SIZE)
  saved_model.export_saved_model(module, str(tmp / "export"))
  reference = {"raw": raw, "results": results, "valid": (int(rh), int(rw))}
  return tf.saved_model.load(str(tmp / "export")), images, reference


def test_serve_logits_returns_the_model_outputs(exported):
  loaded, images, reference = exported
  out = loaded.signatures["serve_logits"](images=tf.constant(images))
  for key in (common.PRED_CLASS_LOGITS, common.PRED_MASK_LOGITS):
    np.testing.assert_allclose(out[key].numpy(), reference["raw"][key].numpy(), rtol=1e-5,
                               atol=1e-5, err_msg=key)   # graph vs eager resize: ulps
  assert out[common.PRED_MASK_LOGITS].shape == (2, 8, 8, NUM_SLOTS)
  np.testing.assert_array_equal(out[common.RESIZED_HEIGHT], [reference["valid"][0]] * 2)
  np.testing.assert_array_equal(out[common.ORIGINAL_WIDTH], [60, 60])
  assert "serve_logits" in saved_model.read_export_info(loaded)["signatures"]


def _back_to_image(maps, valid, size):
  """[B, H, W, ...] at the input size -> the valid part, nearest-resized to ``size``
  (half-pixel centres: output pixel i reads input floor((i + 0.5) * in / out))."""
  part = maps[:, :valid[0], :valid[1]]
  rows = np.minimum(((np.arange(size[0]) + 0.5) * valid[0] / size[0]).astype(int),
                    valid[0] - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * valid[1] / size[1]).astype(int),
                    valid[1] - 1)
  return part[:, rows][:, :, cols]


def test_serving_default_returns_the_instance_masks_and_maps(exported):
  loaded, images, reference = exported
  out = loaded.signatures["serving_default"](images=tf.constant(images))
  results = {k: v.numpy() for k, v in reference["results"].items()}
  assert set(saved_model.read_export_info(loaded)["results"]) == {
      "panoptic", "semantic", "instance_masks"}
  assert "instance" not in out
  valid, size = reference["valid"], images.shape[1:3]
  masks = out[common.INSTANCE_MASKS].numpy()
  assert masks.dtype == bool and masks.shape == (2, 48, 60, NUM_INSTANCES)
  assert valid == (26, 32)
  expected = _back_to_image(results[common.INSTANCE_MASKS], valid, size)
  assert 0 < expected.mean() < 1   # not a trivial comparison
  np.testing.assert_array_equal(masks, expected)
  for key in (common.SEMANTIC, common.PANOPTIC):
    np.testing.assert_array_equal(out[key].numpy(), _back_to_image(results[key], valid, size))
  np.testing.assert_array_equal(out[common.INSTANCE_CLASSES].numpy(),
                                results[common.INSTANCE_CLASSES])
  np.testing.assert_allclose(out[common.INSTANCE_SCORES].numpy(),
                             results[common.INSTANCE_SCORES], rtol=1e-5)
