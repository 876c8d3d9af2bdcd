"""ReMaX training-only semantic heads on the kMaX transformer decoder."""

import functools

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.losses import criterion
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling import heads
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.transformer_decoders.kmax import KMaXTransformerDecoder
from deeplab_panoptic.training import model_summary
from tests.losses import builders

NUM_CLASSES = 3
N = 6           # cluster centres
BOTTLENECK = 16  # width of the k-means key the heads read
ASPP_DIM = 8
STAGES = 2      # ReMaX heads on layers 0 and 1 of 3
SIZE = 64
VOID = 255


def _decoder(remax_num_stages=STAGES, strides=(32, 16, 8)):
  return KMaXTransformerDecoder(
      num_centers=N, strides=strides, num_blocks=(1,) * len(strides), center_dim=16,
      bottleneck_dim=BOTTLENECK, num_heads=2, key_dim=8, ffn_dim=32,
      remax_num_stages=remax_num_stages,
      remax_head_factory=functools.partial(
          heads.ReMaXSemanticHead, num_classes=NUM_CLASSES, aspp_dim=ASPP_DIM,
          atrous_rates=(1,), dropout=0.0))


class _TinyPyramid(base.PixelEncoder):
  """Stand-in encoder: strided convs, ``[B, H, W, 3]`` -> ``{"stride<s>": [B, H/s, W/s, 8]}``
  for s = 4..32 (a real backbone would only slow the XLA compile down)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._stem = keras.layers.Conv2D(8, 4, strides=4)
    self._down = [keras.layers.Conv2D(8, 3, strides=2, padding="same") for _ in range(3)]
    self.output_channels = {f"stride{s}": 8 for s in (4, 8, 16, 32)}

  def call(self, images, training=None):
    x = self._stem(images)
    features = {"stride4": x}
    for stride, down in zip((8, 16, 32), self._down):
      x = down(tf.nn.relu(x))
      features[f"stride{stride}"] = x
    return features


class _Identity(base.PixelDecoder):

  def call(self, features, training=None):
    return features


@pytest.fixture(scope="module")
def model():
  gin.clear_config()
  gin.bind_parameter("MaskTransformerPredictor.num_classes", NUM_CLASSES)
  gin.bind_parameter("MaskTransformerPredictor.embedding_dim", 8)
  gin.bind_parameter("MaskTransformerPredictor.pixel_head_dim", 8)
  m = MaskTransformer(pixel_encoder=_TinyPyramid(), pixel_decoder=_Identity(),
                      transformer_decoder=_decoder())
  m(tf.zeros([1, SIZE, SIZE, 3]), training=True)
  yield m
  gin.clear_config()


def _batch(batch_size=2):
  """Stuff class 0 on the left, stuff class 2 on the right, a class-1 thing square."""
  mask_id = np.zeros((batch_size, SIZE, SIZE), np.int32)
  mask_id[:, :, SIZE // 2:] = 2
  mask_id[:, 8:24, 20:40] = 1
  mask_id[:, -4:, :] = -1                      # a void strip
  classes = np.array([[0, 1, 2, -1]] * batch_size, np.int32)
  semantic = np.where(mask_id >= 0, classes[0][np.maximum(mask_id, 0)], VOID)
  return {
      common.IMAGE: tf.random.stateless_uniform([batch_size, SIZE, SIZE, 3], [1, 2], -1, 1),
      common.GT_MASK_ID: tf.constant(mask_id),
      common.GT_CLASSES: tf.constant(classes),
      common.GT_IS_THING: tf.constant([[False, True, False, False]] * batch_size),
      common.GT_SEMANTIC: tf.constant(semantic.astype(np.int32)),
      common.GT_SEMANTIC_WEIGHT: tf.constant((semantic != VOID).astype(np.float32)),
  }


def test_stage_semantic_logits_in_training_only(model):
  images = tf.random.uniform([2, SIZE, SIZE, 3], -1, 1)
  aux = model(images, training=True)[common.AUX_OUTPUTS]
  assert len(aux) == 3
  for index, stage in enumerate(aux):
    if index < STAGES:
      # At the resolution of the layer's own mask logits (strides 32, 16).
      h, w = stage[common.PRED_MASK_LOGITS].shape[1:3]
      assert (h, w) == (SIZE // 32 * 2 ** index,) * 2
      assert stage[common.PRED_STAGE_SEMANTIC_LOGITS].shape == (2, h, w, NUM_CLASSES)
    else:
      assert common.PRED_STAGE_SEMANTIC_LOGITS not in stage
  inference = model(images, training=False)
  assert all(common.PRED_STAGE_SEMANTIC_LOGITS not in stage
             for stage in inference[common.AUX_OUTPUTS] + [inference])


def test_stage_semantic_logits_read_pixels_not_centres(model):
  """x_sem is the k-means key (a pixel feature): moving the centres moves the
  masks but not the stage semantic logits of the layer the centres enter."""
  images = tf.random.uniform([2, SIZE, SIZE, 3], -1, 1)
  before = model(images, training=True)[common.AUX_OUTPUTS][0]
  centers = model.transformer_decoder._centers  # pylint: disable=protected-access
  saved = centers.numpy()
  # Random, not constant: the centres' batch norm would remove a constant shift.
  centers.assign(saved + np.random.default_rng(0).normal(size=saved.shape))
  try:
    after = model(images, training=True)[common.AUX_OUTPUTS][0]
  finally:
    centers.assign(saved)
  np.testing.assert_allclose(after[common.PRED_STAGE_SEMANTIC_LOGITS].numpy(),
                             before[common.PRED_STAGE_SEMANTIC_LOGITS].numpy(), atol=1e-6)
  assert not np.allclose(after[common.PRED_MASK_LOGITS].numpy(),
                         before[common.PRED_MASK_LOGITS].numpy(), atol=1e-3)


def _head_weight_counts():
  """Hand count of one ReMaXSemanticHead: ASPP (1x1, one 3x3 atrous, image pool,
  1x1 projection of the 3 branches; every conv bias-free + BN) and a 1x1 conv with
  bias to the classes. Returns (trainable, all) counts."""
  convs = (BOTTLENECK * ASPP_DIM + 9 * BOTTLENECK * ASPP_DIM + BOTTLENECK * ASPP_DIM
           + 3 * ASPP_DIM * ASPP_DIM)
  logits = ASPP_DIM * NUM_CLASSES + NUM_CLASSES
  num_bn = 4
  return convs + logits + num_bn * 2 * ASPP_DIM, convs + logits + num_bn * 4 * ASPP_DIM


def test_heads_are_training_only_and_left_out_of_params(model):
  only = model.training_only_layers
  assert len(only) == STAGES
  assert all(isinstance(layer, heads.ReMaXSemanticHead) for layer in only)
  trainable, everything = _head_weight_counts()
  counts = model_summary.parameter_counts(model)
  assert model_summary.count_params(model.weights) - counts["params"] == STAGES * everything
  assert counts["train_params"] == model_summary.count_params(model.trainable_weights)
  assert model_summary.count_params(
      [v for layer in only for v in layer.trainable_weights]) == STAGES * trainable


def test_inference_graph_does_not_capture_the_heads(model):
  spec = tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)
  graph_fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
  head_vars = {id(v) for layer in model.training_only_layers for v in layer.weights}
  captured = {id(v) for v in graph_fn.variables}
  assert captured and not captured & head_vars
  assert head_vars and not any("remax" in op.name
                               for op in graph_fn.graph.get_operations())


class _PanopticStub:
  """Stands in for a postprocessor: the export module reads only its declaration."""

  results = frozenset({common.PANOPTIC})

  def __call__(self, *args):
    return {}


def test_export_module_tracks_only_inference_variables(model):
  """What a SavedModel saves is what the export module tracks: the heads are not
  in it, every other weight is."""
  info = dataset_info.from_categories_list(
      "tiny", [{"id": i, "name": f"c{i}", "isthing": i == 1} for i in range(NUM_CLASSES)])
  module = saved_model.PanopticExportModule(model, _PanopticStub(), input_size=(SIZE, SIZE),
                                            dataset_info=info)
  assert module.model is model
  head_vars = {id(v) for layer in model.training_only_layers for v in layer.weights}
  tracked = {id(v) for v in module.variables}
  assert head_vars and not tracked & head_vars
  assert tracked == {id(v) for v in model.weights} - head_vars
  assert (model_summary.count_params(module.variables)
          == model_summary.parameter_counts(model)["params"])


def test_bad_stage_count_raises():
  with pytest.raises(ValueError, match="remax_num_stages"):
    _decoder(remax_num_stages=4)


def test_remax_train_step_compiles_with_xla(model):  # pylint: disable=unused-argument
  # `model` only for its gin bindings. One k-means layer (2 loss stages, ReMask on
  # the first) keeps the CPU XLA compile short; the host matching is done outside
  # the compiled step, as the loss's docstring shows.
  tiny = MaskTransformer(pixel_encoder=_TinyPyramid(), pixel_decoder=_Identity(),
                         transformer_decoder=_decoder(remax_num_stages=1, strides=(16,)))
  batch = _batch()
  loss_fn = builders.max_criterion(
      matcher_method="scipy", mask_activation="sigmoid", semantic_weight=0.0,
      instance_discrimination_weight=0.0,  # not ReMaX's; shortens the compile
      remask_num_stages=1, stage_semantic_weight=0.5, reclass_eta=0.1)
  matching = loss_fn.match(batch, tiny(batch[common.IMAGE], training=True))
  optimizer = keras.optimizers.SGD(0.1)
  variables = tiny.trainable_variables
  head = [v.ref() for layer in tiny.training_only_layers for v in layer.trainable_variables]

  @tf.function(jit_compile=True)
  def forward_backward(batch, matching):
    with tf.GradientTape() as tape:
      losses = loss_fn(batch, tiny(batch[common.IMAGE], training=True), matching=matching)
    return losses, tape.gradient(losses[common.LOSS_TOTAL], variables)

  losses, grads = forward_backward(batch, matching)
  assert np.isfinite(losses[common.LOSS_TOTAL].numpy())
  assert criterion.aux_loss_name(0, common.LOSS_STAGE_SEMANTIC) in losses
  assert common.LOSS_STAGE_SEMANTIC not in losses   # the final output is not relaxed
  by_ref = {v.ref(): g for v, g in zip(variables, grads)}
  assert head and all(by_ref[ref] is not None for ref in head)
  assert any(np.any(by_ref[ref].numpy() != 0) for ref in head)
  assert all(np.all(np.isfinite(g.numpy())) for g in grads if g is not None)
  before = [v.numpy() for v in variables]
  optimizer.apply_gradients(zip(grads, variables))
  assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables))


def test_panoptic_losses_do_not_train_the_heads(model):
  """ReMask stops the gradient at m_sem: without the per-stage semantic loss the
  heads get no gradient, though ReMask still reads their logits."""
  batch = _batch()
  loss_fn = builders.max_criterion(
      matcher_method="scipy", mask_activation="sigmoid", semantic_weight=0.0,
      remask_num_stages=STAGES, stage_semantic_weight=0.0, reclass_eta=0.1)
  head_vars = [v for layer in model.training_only_layers for v in layer.trainable_variables]
  with tf.GradientTape() as tape:
    outputs = model(batch[common.IMAGE], training=True)
    losses = loss_fn(batch, outputs)
  grads = tape.gradient(losses[common.LOSS_TOTAL], head_vars)
  assert all(g is None or not np.any(g.numpy()) for g in grads)
  # ReMask did change the first stages' losses (else the check above is empty).
  plain = builders.max_criterion(
      matcher_method="scipy", mask_activation="sigmoid", semantic_weight=0.0,
      reclass_eta=0.1)(batch, outputs)
  assert not np.isclose(losses["aux_0/" + common.LOSS_PQ_DICE].numpy(),
                        plain["aux_0/" + common.LOSS_PQ_DICE].numpy(), rtol=1e-6)
