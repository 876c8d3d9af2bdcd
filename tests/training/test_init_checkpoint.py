"""Starting a run from another run's checkpoint: only the named parts are read."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.kmax import KMaXPixelDecoder
from deeplab_panoptic.modeling.pixel_encoders.resnet import ResNetEncoder
from deeplab_panoptic.modeling.transformer_decoders.kmax import KMaXTransformerDecoder
from deeplab_panoptic.training import init_checkpoint


def _model(num_classes):
  gin.clear_config()
  gin.bind_parameter("MaskTransformerPredictor.num_classes", num_classes)
  gin.bind_parameter("MaskTransformerPredictor.embedding_dim", 16)
  gin.bind_parameter("MaskTransformerPredictor.pixel_head_dim", 16)
  try:
    m = MaskTransformer(
        pixel_encoder=ResNetEncoder(model_id=18, depth_multiplier=0.25),
        pixel_decoder=KMaXPixelDecoder(num_blocks=(1, 1, 1, 1), filters=(16, 8, 8, 8),
                                       expansion=2),
        transformer_decoder=KMaXTransformerDecoder(
            num_centers=4, num_blocks=(1, 0, 0), center_dim=16, bottleneck_dim=16,
            num_heads=2, key_dim=8, ffn_dim=32))
    m(tf.zeros([1, 32, 32, 3]), training=True)
  finally:
    gin.clear_config()
  return m


def _values(layer):
  return [v.numpy().copy() for v in layer.weights]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A 'COCO' model (5 classes) with non-initial weights, saved as main.py saves."""
  source = _model(num_classes=5)
  for i, v in enumerate(source.weights):
    v.assign(tf.random.stateless_normal(v.shape, seed=[i, 7], dtype=v.dtype))
  directory = tmp_path_factory.mktemp("source_run")
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=source, global_step=tf.Variable(123, dtype=tf.int64)),
      str(directory), max_to_keep=1)
  manager.save()
  return source, str(directory)


def test_pixel_encoder_only_into_a_model_with_other_classes(saved):
  source, directory = saved
  target = _model(num_classes=3)  # another dataset: the class head differs
  decoder_before = _values(target.transformer_decoder)
  read = init_checkpoint.initialize_from_checkpoint(target, directory, ["pixel_encoder"])
  assert read == tf.train.latest_checkpoint(directory)
  for got, want in zip(_values(target.pixel_encoder), _values(source.pixel_encoder)):
    np.testing.assert_array_equal(got, want)
  # Everything else keeps its fresh initialisation.
  for got, want in zip(_values(target.transformer_decoder), decoder_before):
    np.testing.assert_array_equal(got, want)
  assert len(target.pixel_encoder.weights) > 10


def test_whole_model(saved):
  source, directory = saved
  target = _model(num_classes=5)
  init_checkpoint.initialize_from_checkpoint(target, directory, ["all"])
  for got, want in zip(_values(target), _values(source)):
    np.testing.assert_array_equal(got, want)
  x = tf.random.stateless_uniform([1, 32, 32, 3], seed=[1, 2], minval=-1)
  a, b = source(x, training=False), target(x, training=False)
  for k in a:
    if isinstance(a[k], tf.Tensor):
      np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-6, atol=1e-6)


def test_errors_name_the_setting(saved, tmp_path):
  _, directory = saved
  target = _model(num_classes=3)
  with pytest.raises(FileNotFoundError, match="init_checkpoint"):
    init_checkpoint.initialize_from_checkpoint(target, str(tmp_path / "nothing"))
  with pytest.raises(FileNotFoundError, match="no checkpoint in directory"):
    init_checkpoint.initialize_from_checkpoint(target, str(tmp_path))
  with pytest.raises(ValueError, match="has no part"):
    init_checkpoint.initialize_from_checkpoint(target, directory, ["backbone"])
  # The whole model does not fit: 3 classes here, 5 in the checkpoint.
  with pytest.raises(ValueError, match="does not fit"):
    init_checkpoint.initialize_from_checkpoint(target, directory, ["all"])
  # A checkpoint without the model's variables (another kind of checkpoint).
  other = tf.train.Checkpoint(model=tf.train.Checkpoint(x=tf.Variable(1.0)))
  prefix = other.write(str(tmp_path / "other" / "ckpt"))
  with pytest.raises(ValueError, match="does not hold every variable"):
    init_checkpoint.initialize_from_checkpoint(target, prefix, ["pixel_encoder"])


def test_model_garden_backbone_checkpoint(tmp_path):
  """A Model Garden classifier checkpoint keeps its ResNet under the root 'backbone'."""
  from official.vision.modeling.backbones import resnet as mg_resnet
  import tf_keras as keras
  classifier_backbone = mg_resnet.ResNet(
      model_id=18, depth_multiplier=0.25,
      input_specs=keras.layers.InputSpec(shape=[None, None, None, 3]))
  classifier_backbone(tf.zeros([1, 32, 32, 3]))
  for i, v in enumerate(classifier_backbone.weights):
    v.assign(tf.random.stateless_normal(v.shape, seed=[i, 3], dtype=v.dtype))
  head = keras.layers.Dense(10)
  head(tf.zeros([1, 128]))
  # As Model Garden's trainer saves: the model, the optimizer step and, at the
  # root, the model's checkpoint_items (backbone=...).
  prefix = tf.train.Checkpoint(
      global_step=tf.Variable(7, dtype=tf.int64),
      model=tf.train.Checkpoint(backbone=classifier_backbone, head=head),
      backbone=classifier_backbone).write(str(tmp_path / "ckpt-7"))
  target = _model(num_classes=3)
  decoder_before = _values(target.transformer_decoder)
  init_checkpoint.initialize_from_checkpoint(target, prefix, layout="model_garden_backbone")
  got_all = _values(target.pixel_encoder.model_garden_backbone)
  assert len(got_all) == len(classifier_backbone.weights) > 10
  for got, want in zip(got_all, _values(classifier_backbone)):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(_values(target.transformer_decoder), decoder_before):
    np.testing.assert_array_equal(got, want)
  # The same file read in our layout names what is missing.
  with pytest.raises(ValueError, match="does not hold every variable"):
    init_checkpoint.initialize_from_checkpoint(target, prefix, ["pixel_encoder"])
  with pytest.raises(ValueError, match="init_checkpoint_layout must be one of"):
    init_checkpoint.initialize_from_checkpoint(target, prefix, layout="torch")
