"""A training step of a tiny model with every loss term, XLA-compiled."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion
from tests.losses import builders
from tests.losses import test_mask_losses as base

NUM_POINTS = 4


class _TinyMaskTransformer(keras.Model):
  """Every output key any loss reads, from a few layers (3 decoder stages)."""

  def __init__(self, num_stages: int = 3):
    super().__init__()
    self.num_stages = num_stages
    self.features = keras.layers.Conv2D(8, 3, strides=2, padding="same")
    self.queries = self.add_weight(name="queries", shape=[base.N, 8])
    self.stage_updates = [keras.layers.Dense(8) for _ in range(num_stages)]
    self.classes = keras.layers.Dense(base.C + 1)
    self.embedding = keras.layers.Dense(base.D)
    self.mask_embedding = keras.layers.Dense(base.D)
    self.stage_semantic = keras.layers.Conv2D(base.C, 1)
    self.semantic = keras.layers.Conv2D(base.C, 1)
    self.points = keras.layers.Dense(NUM_POINTS * 2)
    self.location = keras.layers.Dense(4)

  def call(self, images, training=None):
    features = tf.nn.gelu(self.features(images))  # [B, 4, 4, 8]
    pixels = tf.math.l2_normalize(self.embedding(features), axis=-1)
    batch = tf.shape(images)[0]
    queries = tf.tile(self.queries[tf.newaxis], [batch, 1, 1])
    stages = []
    for update in self.stage_updates:
      pooled = tf.reduce_mean(features, axis=[1, 2])[:, tf.newaxis]
      queries = queries + tf.nn.gelu(update(queries + pooled))
      location = tf.sigmoid(self.location(queries))
      stages.append({
          common.PRED_CLASS_LOGITS: self.classes(queries),
          common.PRED_MASK_LOGITS: tf.einsum(
              "bhwd,bnd->bhwn", pixels, self.mask_embedding(queries)) * 5.0,
          common.PRED_PIXEL_EMBEDDING: pixels,
          common.PRED_STAGE_SEMANTIC_LOGITS: self.stage_semantic(features),
          common.PRED_REFERENCE_POINTS: tf.reshape(
              tf.sigmoid(self.points(queries)), [-1, base.N, NUM_POINTS, 2]),
          common.PRED_LOCATION_CENTER: location[..., :2],
          common.PRED_LOCATION_SCALE: location[..., 2:],
      })
    outputs = dict(stages[-1])
    outputs[common.AUX_OUTPUTS] = stages[:-1]
    outputs[common.PRED_SEMANTIC_LOGITS] = self.semantic(features)
    return outputs


_LOSSES = {
    "max_cmt_remax": lambda: builders.max_criterion(
        matcher_method="tpu", mask_activation="sigmoid",
        instance_discrimination_sample_k=12,
        mask_approximation_weight=1.0, remask_num_stages=2, reclass_eta=0.1),
    "max_per_stage_softmax": lambda: builders.max_criterion(
        matcher_method="tpu", matching_mode="per_stage",
        negative_class_weighting="void_fraction"),
    "panoptic_segformer": lambda: builders.psf_criterion(
        matcher_method="tpu"),
}


def _trained_layers(model, name):
  """Layers every loss of `name` must send gradient to."""
  layers = [model.features, model.classes, model.mask_embedding,
            model.embedding] + model.stage_updates
  if name == "max_cmt_remax":
    layers += [model.stage_semantic, model.semantic, model.points]
  if name == "max_per_stage_softmax":
    layers += [model.semantic]
  if name == "panoptic_segformer":
    layers += [model.location]
  return layers


@pytest.mark.parametrize("name", sorted(_LOSSES))
def test_train_step_compiles_with_xla(name):
  tf.random.set_seed(0)
  batch, _ = base._make_inputs(seed=40)
  batch = base._to_tf(batch)
  images = tf.random.normal([base.B, base.H, base.W, 3], seed=1)
  model = _TinyMaskTransformer()
  model(images)
  loss_fn = _LOSSES[name]()
  optimizer = keras.optimizers.SGD(0.05)

  @tf.function(jit_compile=True)
  def forward_backward(images, batch):
    with tf.GradientTape() as tape:
      losses = loss_fn(batch, model(images, training=True))
    grads = tape.gradient(losses[common.LOSS_TOTAL],
                          model.trainable_variables)
    return losses, grads

  totals = []
  for _ in range(3):
    losses, grads = forward_backward(images, batch)
    for key, value in losses.items():
      assert np.isfinite(value.numpy()), key
    grad_of = {v.ref(): g for v, g in zip(model.trainable_variables, grads)}
    for layer in _trained_layers(model, name):
      for variable in layer.trainable_variables:
        grad = grad_of[variable.ref()]
        assert grad is not None, variable.name
        assert np.all(np.isfinite(grad.numpy())), variable.name
        assert np.any(grad.numpy() != 0), variable.name
    optimizer.apply_gradients(
        (g, v) for g, v in zip(grads, model.trainable_variables)
        if g is not None)
    totals.append(float(losses[common.LOSS_TOTAL]))
  assert totals[-1] != totals[0]
  if name == "max_cmt_remax":
    for key in (common.LOSS_MASK_APPROXIMATION, "aux_0/" +
                common.LOSS_STAGE_SEMANTIC, "aux_1/" + common.LOSS_PQ_CLASS):
      assert key in losses, key
  if name == "panoptic_segformer":
    assert "aux_1/" + common.LOSS_LOCATION in losses


def test_max_deeplab_quickstart_train_step_compiles_with_xla():
  """The MaX quickstart model and its gin-configured criterion (PQ-style,
  mask-ID, instance discrimination, semantic, aux) in one XLA train step."""
  import gin  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.meta_arch import MaskTransformer  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  try:
    # The pure-TF matcher: scipy cannot run inside an XLA cluster.
    main_lib.parse_gin(["experiments/quickstart/max_deeplab_shapes.gin"], [
        "HungarianMatcher.method = 'tpu'",
        # One block per encoder stage (the recipe has two in stage 4): the XLA
        # compile time grows with the number of axial blocks, not their width.
        "AxialResNet.num_blocks = (1, 1, 1, 1)",
    ])
    model = MaskTransformer()
    loss_fn = criterion.Criterion()
  finally:
    gin.clear_config()
  tf.random.set_seed(0)
  # 17x17 images (the XLA compile time grows with the input size): the model
  # predicts at stride 4 (5x5); the 8x8 ground truth is resized to it by the
  # loss, as full-size labels are in training.
  batch = base._to_tf(base._make_inputs(seed=41)[0])
  images = tf.random.uniform([base.B, 17, 17, 3], -1, 1, seed=2)
  model(images, training=True)
  variables = model.trainable_variables
  optimizer = keras.optimizers.SGD(0.05)

  @tf.function(jit_compile=True)
  def forward_backward(images, batch):
    with tf.GradientTape() as tape:
      losses = loss_fn(batch, model(images, training=True))
    grads = tape.gradient(losses[common.LOSS_TOTAL], variables)
    # Relative-position tables are gathered: their gradients come as IndexedSlices.
    return losses, [tf.convert_to_tensor(g) for g in grads]

  totals = []
  for _ in range(2):
    losses, grads = forward_backward(images, batch)
    for key in (common.LOSS_PQ_CLASS, common.LOSS_SEMANTIC, common.LOSS_TOTAL):
      assert key in losses and np.isfinite(losses[key].numpy()), key
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    # Every part of the model is trained: encoder, decoder, memory head,
    # predictor and the semantic head.
    for part in (model.pixel_encoder, model.pixel_decoder, model.transformer_decoder,
                 model.predictor, model.semantic_head):
      part_grads = [g for v, g in zip(variables, grads)
                    if any(v is w for w in part.trainable_variables)]
      assert any(np.any(g.numpy() != 0) for g in part_grads), part.name
    optimizer.apply_gradients(zip(grads, variables))
    totals.append(float(losses[common.LOSS_TOTAL]))
  assert totals[1] != totals[0]
