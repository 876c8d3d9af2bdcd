"""``deeplab_panoptic.load(path).predict(images)``: a batch of mixed sizes equals the
single-image signature called on each image, from a SavedModel and from a checkpoint.

One tiny kMaX (the shapes quickstart at a 64x64 input, initial weights with the
postprocessor's thresholds at 0 so that the maps hold many segments) is built,
checkpointed and exported once for the module; the reference is the exported
``serving_default`` signature, one image per call.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from PIL import Image

import deeplab_panoptic
from deeplab_panoptic import common
from deeplab_panoptic import inference
from deeplab_panoptic import main as main_lib
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.training import experiment
from tests import pictures

QUICKSTART = "experiments/quickstart/kmax_deeplab_shapes.gin"
PARAMS = [
    "InputConfig.crop_size=(64, 64)",
    # One k-means layer (the quickstart has 3): a third of the tracing time.
    "KMaXTransformerDecoder.strides=(8,)",
    "KMaXTransformerDecoder.num_blocks=(1,)",
    "PixelwisePanopticPostprocessor.class_threshold=0.0",
    "PixelwisePanopticPostprocessor.pixel_confidence_threshold=0.0",
    "PixelwisePanopticPostprocessor.thing_area_threshold=0",
    "PixelwisePanopticPostprocessor.stuff_area_threshold=0",
]
SIZES = [(70, 90), (128, 64), (33, 41)]
# Initial weights whose maps hold 7-11 segments on each picture (with seed 1 the
# model paints most pixels one stuff class).
SEED = 3


def _picture(height: int, width: int, seed: int) -> np.ndarray:
  return pictures.disc_picture(height, width, seed, min_radius=0.1)


pytestmark = pytest.mark.slow  # ~40 s alone on 2 cores: a build, an export, two loads.


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A model directory with a checkpoint and operative_config.gin, and its export."""
  model_dir = tmp_path_factory.mktemp("inference") / "run"
  gin.clear_config()
  main_lib.parse_gin([QUICKSTART], PARAMS)
  tf_keras.utils.set_random_seed(SEED)
  exp = experiment.Experiment(str(model_dir), "export")
  tf.io.gfile.makedirs(str(model_dir))
  step = tf.Variable(7, dtype=tf.int64)
  tf.train.CheckpointManager(tf.train.Checkpoint(global_step=step, model=exp.model),
                             str(model_dir), max_to_keep=1).save(checkpoint_number=step)
  exp.write_operative_config()
  export_dir = saved_model.export_saved_model(exp.export_module(), str(model_dir / "export"))
  images = [_picture(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
  loaded = tf.saved_model.load(export_dir)
  single = loaded.signatures[saved_model.SERVING_DEFAULT]
  reference = [{k: v.numpy()[0] for k, v in single(images=tf.constant(im[None])).items()}
               for im in images]
  yield {"model_dir": str(model_dir), "export_dir": export_dir, "images": images,
         "reference": reference}
  gin.clear_config()


@pytest.fixture(scope="module")
def predictor(run):
  return deeplab_panoptic.load(run["export_dir"])


def _check_equal(results, reference, images):
  assert len(results) == len(images)
  for result, ref, image in zip(results, reference, images):
    assert set(result) == set(ref) - {common.ORIGINAL_HEIGHT, common.ORIGINAL_WIDTH}
    for key in (common.PANOPTIC, common.SEMANTIC, common.INSTANCE_MASKS):
      assert result[key].shape[:2] == image.shape[:2], key
      np.testing.assert_array_equal(result[key], ref[key], err_msg=key)
    for key in (common.SEGMENT_CLASSES, saved_model.SEGMENT_IDS, common.SEGMENT_AREAS,
                common.INSTANCE_CLASSES):
      np.testing.assert_array_equal(result[key], ref[key], err_msg=key)
    for key in (common.SEGMENT_SCORES, common.INSTANCE_SCORES):
      np.testing.assert_allclose(result[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_saved_model_batch_of_mixed_sizes_equals_one_by_one(run, predictor):
  # The maps are not trivial: several segments per image.
  assert all(len(np.unique(ref[common.PANOPTIC])) >= 5 for ref in run["reference"])
  # The quickstart adds Mask2Former's semantic / instance results to its panoptic.
  assert predictor.results == {common.PANOPTIC, common.SEMANTIC, common.INSTANCE_MASKS}
  assert predictor.info.num_classes == 5
  images = run["images"]
  _check_equal(predictor.predict(images), run["reference"], images)
  # PIL images, and a batch cut into calls of 2 (the last one a single image).
  pil = [Image.fromarray(im) for im in images]
  _check_equal(predictor.predict(pil, batch_size=2), run["reference"], images)


def test_checkpoint_dir_equals_the_saved_model(run):
  predictor = deeplab_panoptic.load(run["model_dir"])
  assert "step 7" in predictor.source
  _check_equal(predictor.predict(run["images"]), run["reference"], run["images"])


def test_bad_inputs_are_one_clear_error(run, predictor, tmp_path):
  with pytest.raises(inference.LoadError, match=f"{tmp_path / 'nowhere'} is not a directory"):
    deeplab_panoptic.load(str(tmp_path / "nowhere"))
  with pytest.raises(inference.LoadError, match="holds neither a SavedModel"):
    deeplab_panoptic.load(str(tmp_path))
  # A run directory without its checkpoint names the SavedModel beside it.
  (tmp_path / "export").symlink_to(run["export_dir"])
  with pytest.raises(inference.LoadError, match="its SavedModel is .*export"):
    deeplab_panoptic.load(str(tmp_path))
  with pytest.raises(TypeError, match="wrap one image in a list"):
    predictor.predict(run["images"][0])
  with pytest.raises(ValueError, match=r"images\[1\]: expected uint8 \[height, width, 3\] "
                                       r"RGB, got float32 \[8, 8, 3\]"):
    predictor.predict([run["images"][0], np.zeros((8, 8, 3), np.float32)])
