"""A per-pixel model's SavedModel serves what the in-memory model predicts.

The DeepLabV3+ shapes recipe (a ``SemanticSegmenter`` with a
``SemanticPostprocessor``, which declares only ``semantic``) is built with fixed
initial weights, exported, loaded back, and its signatures are compared with the
in-memory model and postprocessor run image by image: fit-and-pad, model,
postprocess, crop the valid part, nearest resize back to the image size.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic import main as main_lib
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.training import experiment
from tests.pictures import disc_picture as _picture

RECIPE = "experiments/quickstart/deeplabv3plus_shapes.gin"


def _reference(exp, module, image: np.ndarray) -> np.ndarray:
  """int [H, W] semantic map of the in-memory model at the image's size."""
  inputs, (rh, rw) = saved_model.fit_and_pad(tf.constant(image[None]), module.input_size,
                                             *module._resize)
  pred = exp.postprocessor(exp.model(inputs, training=False), module.input_size)
  sem = pred[common.SEMANTIC][0, :int(rh), :int(rw), None]
  return tf.image.resize(sem, image.shape[:2], method="nearest")[..., 0].numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("semantic_export")
  gin.clear_config()
  main_lib.parse_gin([RECIPE], [])
  keras.utils.set_random_seed(0)
  exp = experiment.Experiment(str(tmp / "run"), "export")
  module = saved_model.PanopticExportModule(exp.model, exp.postprocessor, dataset_info=exp.info)
  images = [_picture(100, 150, 1), _picture(100, 150, 2), _picture(170, 90, 3)]
  references = [_reference(exp, module, im) for im in images]
  saved_model.export_saved_model(module, str(tmp / "export"))
  gin.clear_config()
  return tf.saved_model.load(str(tmp / "export")), images, references, exp.info


def test_semantic_signature_equals_the_in_memory_model(exported):
  loaded, images, references, info = exported
  assert saved_model.read_export_info(loaded)["results"] == ["semantic"]
  out = loaded.signatures["serving_default"](images=tf.constant(np.stack(images[:2])))
  assert set(out) >= {"semantic"} and "panoptic" not in out
  # Not a trivial comparison: the untrained model's maps hold several classes.
  assert len(np.unique(np.stack(references[:2]))) > 2
  np.testing.assert_array_equal(out["semantic"].numpy(), np.stack(references[:2]))


def test_padded_batch_of_mixed_sizes_equals_each_image(exported):
  loaded, images, references, info = exported
  batch = np.zeros((3, 170, 150, 3), np.uint8)
  for i, im in enumerate(images):
    batch[i, :im.shape[0], :im.shape[1]] = im
  sizes = tf.constant([im.shape[:2] for im in images], tf.int32)
  out = loaded.signatures["serve_padded_batch"](images=tf.constant(batch), image_sizes=sizes)
  sem = out["semantic"].numpy()
  for i, expected in enumerate(references):
    h, w = expected.shape
    np.testing.assert_array_equal(sem[i, :h, :w], expected, err_msg=f"image {i}")
    assert np.all(sem[i, h:] == info.ignore_label) and np.all(sem[i, :, w:] == info.ignore_label)
