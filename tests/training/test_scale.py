"""Training at scale: mixed precision, loss scaling, recompute, drop-path RNG, eval images.

Tiny shapes throughout; one real model (kMaX parts at test size, 32x32) checks
that the library's layers build and train one step under bfloat16.
"""

import glob
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.postprocess.semantic import SemanticPostprocessor
from deeplab_panoptic import common
from deeplab_panoptic import registry  # pylint: disable=unused-import
from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling import heads
from deeplab_panoptic.modeling.layers.drop_path import DropPath
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.kmax import KMaXPixelDecoder
from deeplab_panoptic.modeling.pixel_encoders.resnet import ResNetEncoder
from deeplab_panoptic.modeling.transformer_decoders.kmax import KMaXTransformerDecoder
from deeplab_panoptic.training import evaluator as evaluator_lib
from deeplab_panoptic.training import experiment
from deeplab_panoptic.training import optimizers
from deeplab_panoptic.training import trainer as trainer_lib
from tests.losses import builders

SIZE = 32
VOID = 255


@pytest.fixture
def clean_state():
  """Leaves gin, the dtype policy and Keras' RNG mode as the next test expects."""
  gin.clear_config()
  yield
  gin.clear_config()
  keras.mixed_precision.set_global_policy("float32")
  keras.backend.experimental.disable_tf_random_generator()


def _shapes_batch(batch_size=2):
  """Stuff 0 left, stuff 2 right, a class-1 thing square, a void strip (shapes' ids)."""
  mask_id = np.zeros((batch_size, SIZE, SIZE), np.int32)
  mask_id[:, :, SIZE // 2:] = 2
  mask_id[:, 4:12, 10:20] = 1
  mask_id[:, -2:, :] = -1
  classes = np.full((batch_size, 16), -1, np.int32)
  classes[:, :3] = [3, 0, 4]
  is_thing = np.zeros((batch_size, 16), bool)
  is_thing[:, 1] = True
  semantic = np.where(mask_id >= 0, classes[0][np.maximum(mask_id, 0)], VOID)
  rng = np.random.default_rng(0)
  return {
      common.IMAGE: rng.uniform(-1, 1, (batch_size, SIZE, SIZE, 3)).astype(np.float32),
      common.GT_MASK_ID: mask_id,
      common.GT_CLASSES: classes,
      common.GT_IS_THING: is_thing,
      common.GT_SEMANTIC: semantic.astype(np.int32),
      common.GT_SEMANTIC_WEIGHT: (semantic != VOID).astype(np.float32),
  }


def _trainer(model, loss_fn, group, batches, batch_size):
  strategy = tf.distribute.get_strategy()
  dataset = tf.data.Dataset.from_tensor_slices(batches).batch(batch_size)
  return trainer_lib.PanopticTrainer(
      strategy, model, loss_fn, group, strategy.experimental_distribute_dataset(dataset),
      global_batch_size=batch_size, total_steps=10)


def _small_kmax():
  """The kMaX family at test size (as tests/modeling/test_meta_arch.py), from gin."""
  gin.parse_config("MaskTransformerPredictor.num_classes = 5\n"
                   "MaskTransformerPredictor.embedding_dim = 16\n"
                   "MaskTransformerPredictor.pixel_head_dim = 16\n"
                   "learning_rate_schedule.total_steps = 10\n"
                   "make_optimizer.name = 'adamw'\n")
  return MaskTransformer(
      pixel_encoder=ResNetEncoder(model_id=18, depth_multiplier=0.25),
      pixel_decoder=KMaXPixelDecoder(num_blocks=(1, 1, 1, 1), filters=(16, 8, 8, 8),
                                     expansion=2),
      transformer_decoder=KMaXTransformerDecoder(
          num_centers=8, num_blocks=(1, 1, 0), center_dim=32, bottleneck_dim=32,
          num_heads=2, key_dim=16, ffn_dim=64),
      semantic_head=heads.SemanticHead(num_classes=5, aspp_dim=16, head_dim=16,
                                       low_level_dims=(8, 8), atrous_rates=(1, 2)))


@pytest.mark.slow
def test_bfloat16_model_builds_and_trains_a_step(clean_state):
  # Slow: tracing the real model, loss and update (~4 min on 2 cores at load 12).
  assert experiment.set_precision_policy("bfloat16") == "mixed_bfloat16"
  model = _small_kmax()
  raw = model(tf.zeros([1, SIZE, SIZE, 3]), training=True)
  # The model computes in bfloat16 on float32 variables...
  assert raw[common.PRED_CLASS_LOGITS].dtype == tf.bfloat16
  assert all(v.dtype == tf.float32 for v in model.weights)
  # ...and what the losses see is float32, nested auxiliary outputs included.
  cast = trainer_lib.float32_outputs(raw)
  assert all(t.dtype == tf.float32 for t in tf.nest.flatten(cast) if t.dtype.is_floating)
  backbone = model.pixel_encoder.trainable_variables
  group = optimizers.OptimizerGroup(
      backbone, [v for v in model.trainable_variables if all(v is not b for b in backbone)],
      backbone_learning_rate_multiplier=1.0)
  before = [v.numpy() for v in model.trainable_variables]
  trainer = _trainer(model, builders.max_criterion(matcher_method="scipy"), group, _shapes_batch(), 2)
  logs = trainer.train(tf.constant(1))
  assert np.isfinite(float(logs["losses/total_loss"])) and float(logs["losses/total_loss"]) > 0
  assert int(group.iterations.numpy()) == 1
  moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
  assert np.mean(moved) > 0.5, [v.name for m, v in zip(moved, model.trainable_variables)
                                if not m]


def _dense_model(seed=0):
  keras.utils.set_random_seed(seed)
  model = keras.Sequential([keras.layers.Dense(3, use_bias=False), keras.layers.Dense(1)])
  model(tf.zeros([1, 4]))
  return model


def _squared_loss(batch, outputs):
  return {common.LOSS_TOTAL: tf.reduce_mean(tf.square(outputs - batch["target"]))}


def test_float16_loss_scaled_steps_apply_skip_and_grow(clean_state):
  gin.parse_config("learning_rate_schedule.total_steps = 10\n"
                   "learning_rate_schedule.schedule = 'constant'\n"
                   "learning_rate_schedule.base_learning_rate = 0.01\n"
                   "make_optimizer.name = 'sgd'\nmake_optimizer.momentum = 0.0")
  rng = np.random.default_rng(1)
  x = rng.normal(size=[4, 2, 4]).astype(np.float32)
  # Batch 2 is 300 away from the outputs: its loss is finite in float32 but its
  # gradient times the scale 2^15 overflows float16 (> 65504) on the way back.
  targets = np.zeros([4, 2, 1], np.float32)
  targets[1] = 300.0
  batches = {common.IMAGE: x.reshape(-1, 4), "target": targets.reshape(-1, 1)}

  reference = _dense_model()  # float32, plain SGD: w -= lr * grad
  with tf.GradientTape() as tape:
    loss = _squared_loss({"target": targets[0]}, reference(x[0]))[common.LOSS_TOTAL]
  expected = [v - 0.01 * g for v, g in
              zip(reference.trainable_variables,
                  tape.gradient(loss, reference.trainable_variables))]

  keras.mixed_precision.set_global_policy("mixed_float16")
  model = _dense_model()
  assert model.layers[0].compute_dtype == "float16"
  scale = optimizers.DynamicLossScale(initial_scale=2.0 ** 15, growth_steps=2)
  group = optimizers.OptimizerGroup(model.layers[0].trainable_variables,
                                    model.layers[1].trainable_variables,
                                    backbone_learning_rate_multiplier=1.0, loss_scale=scale)
  assert "loss_scale" in group.checkpoint_items()
  trainer = _trainer(model, _squared_loss, group, batches, 2)

  trainer.train(tf.constant(1))  # Finite: applied, unscaled.
  for v, e in zip(model.trainable_variables, expected):
    np.testing.assert_allclose(v.numpy(), e.numpy(), rtol=2e-3, atol=2e-3)
  assert float(scale()) == 2.0 ** 15 and int(scale.good_steps.numpy()) == 1

  after_first = [v.numpy() for v in model.trainable_variables]
  trainer.train(tf.constant(1))  # Overflows: skipped, scale halved, step counted.
  for v, a in zip(model.trainable_variables, after_first):
    np.testing.assert_array_equal(v.numpy(), a)
  assert float(scale()) == 2.0 ** 14 and int(scale.good_steps.numpy()) == 0
  assert int(group.iterations.numpy()) == 2 and int(group.backbone.iterations.numpy()) == 2

  trainer.train(tf.constant(2))  # Two finite steps with growth_steps=2: doubled.
  assert float(scale()) == 2.0 ** 15 and int(scale.good_steps.numpy()) == 0
  assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


class _ToyEncoder(base.PixelEncoder):
  """images [B, H, W, 3] -> {"stride1": [B, H, W, 4], "stride2": [B, H/2, W/2, 4]}."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.conv = keras.layers.Conv2D(4, 3, padding="same")
    self.bn = keras.layers.BatchNormalization(momentum=0.5)
    self.down = keras.layers.Conv2D(4, 3, strides=2, padding="same")

  def call(self, images, training=None):
    x = tf.nn.relu(self.bn(self.conv(images), training=training))
    return {"stride1": x, "stride2": tf.nn.relu(self.down(x))}


class _ToyDecoder(base.PixelDecoder):
  """Endpoints -> {"stride1": [B, H, W, 4]} (upsampled stride 2 added, then BN)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.bn = keras.layers.BatchNormalization(momentum=0.5)
    self.conv = keras.layers.Conv2D(4, 1)

  def call(self, endpoints, training=None):
    up = tf.image.resize(endpoints["stride2"], tf.shape(endpoints["stride1"])[1:3])
    up = tf.cast(up, endpoints["stride1"].dtype)  # resize returns float32
    return {"stride1": self.bn(self.conv(endpoints["stride1"] + up), training=training)}


class _ToyTransformerDecoder(base.TransformerDecoder):
  """Features -> (class emb [B, 2, 4], mask emb [B, 2, 4], [aux dict])."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.centers = keras.layers.Dense(8)
    self.bn = keras.layers.BatchNormalization(momentum=0.5)

  def call(self, features, training=None):
    pooled = tf.reduce_mean(features["stride1"], axis=[1, 2])
    centers = tf.reshape(self.bn(self.centers(pooled), training=training), [-1, 2, 4])
    aux = [{common.PRED_CLASS_LOGITS: tf.tanh(centers)}]
    return centers, centers * 2.0, aux


class _ToyPredictor(base.MaskPredictor):
  """(feature [B, H, W, 4], class emb, mask emb) -> class and mask logits."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.cls = keras.layers.Dense(3)

  def call(self, feature, class_embedding, mask_embedding, training=None):
    return {common.PRED_CLASS_LOGITS: self.cls(class_embedding),
            common.PRED_MASK_LOGITS: tf.einsum("bhwc,bnc->bhwn", feature, mask_embedding)}


def _toy_model(recompute):
  keras.utils.set_random_seed(3)
  model = MaskTransformer(pixel_encoder=_ToyEncoder(), pixel_decoder=_ToyDecoder(),
                          transformer_decoder=_ToyTransformerDecoder(),
                          predictor=_ToyPredictor(), output_stride=1, recompute=recompute)
  model(tf.zeros([1, 8, 8, 3]), training=False)
  return model


def test_recompute_gives_the_same_gradients_and_one_moving_average_update(clean_state):
  plain = _toy_model(())
  recomputed = _toy_model(("pixel_encoder", "pixel_decoder", "transformer_decoder"))
  recomputed.set_weights(plain.get_weights())
  images = tf.random.stateless_normal([2, 8, 8, 3], [4, 5])

  def gradients(model, jit_compile=False):
    @tf.function(jit_compile=jit_compile)
    def step(images):
      with tf.GradientTape() as tape:
        out = model(images, training=True)
        loss = (tf.reduce_sum(tf.square(out[common.PRED_MASK_LOGITS]))
                + tf.reduce_sum(tf.square(out[common.PRED_CLASS_LOGITS]))
                + tf.reduce_sum(out[common.AUX_OUTPUTS][0][common.PRED_CLASS_LOGITS]))
      return loss, tape.gradient(loss, model.trainable_variables)
    return step(images)

  loss_a, grads_a = gradients(plain)
  loss_b, grads_b = gradients(recomputed)
  np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
  assert len(grads_a) == len(grads_b) == len(plain.trainable_variables)
  for a, b in zip(grads_a, grads_b):
    assert np.abs(a.numpy()).max() > 0
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
  moved_once = [v.numpy() for v in recomputed.non_trainable_variables]
  # The recomputation also compiles with XLA (the TPU train step).
  _, grads_xla = gradients(recomputed, jit_compile=True)
  # XLA reorders sums: compare at the gradients' scale (the conv bias before a
  # batch norm has a zero gradient, computed as rounding noise either way).
  scale = max(np.abs(a.numpy()).max() for a in grads_a)
  for a, b in zip(grads_a, grads_xla):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5 * scale)
  for v, value in zip(recomputed.non_trainable_variables, moved_once):
    v.assign(value)  # Back to one update for the comparison below.
  # Moving statistics moved once in both (a second update would differ:
  # momentum 0.5 applied twice).
  for a, b in zip(plain.non_trainable_variables, recomputed.non_trainable_variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)
  moving_means = [v for v in plain.non_trainable_variables if "moving_mean" in v.name]
  assert len(moving_means) == 3 and all(np.abs(v.numpy()).max() > 0 for v in moving_means)
  # Outside training the option changes nothing and runs the plain call.
  np.testing.assert_allclose(
      recomputed(images, training=False)[common.PRED_MASK_LOGITS].numpy(),
      plain(images, training=False)[common.PRED_MASK_LOGITS].numpy(), rtol=1e-6, atol=1e-6)


def test_recompute_rejects_unknown_parts(clean_state):
  with pytest.raises(ValueError, match="recompute"):
    MaskTransformer(pixel_encoder=_ToyEncoder(), pixel_decoder=_ToyDecoder(),
                    transformer_decoder=_ToyTransformerDecoder(), recompute=("heads",))


def test_drop_path_generator_is_checkpointed_and_resumes_its_stream(clean_state, tmp_path):
  keras.utils.set_random_seed(7)
  keras.backend.experimental.enable_tf_random_generator()
  model = keras.Sequential([DropPath(0.5)])
  ones = tf.ones([16, 1])
  model(ones, training=True)
  holder = type("Holder", (), {"model": model})()
  generators = experiment.Experiment._layer_random_generators(holder)  # pylint: disable=protected-access
  assert len(generators) == 1
  checkpoint = tf.train.Checkpoint(layer_random_generators=generators)
  path = checkpoint.save(str(tmp_path / "ckpt"))
  first = [model(ones, training=True).numpy() for _ in range(2)]
  checkpoint.restore(path)
  again = [model(ones, training=True).numpy() for _ in range(2)]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  # Real draws: kept samples are scaled by 1 / keep, the others dropped.
  values = np.concatenate(first).ravel()
  assert set(np.unique(values)) == {0.0, 2.0}
  assert not np.array_equal(first[0], first[1])


def test_eval_pictures_are_written_as_image_summaries(clean_state, tmp_path):
  info = dataset_info_lib.dataset_info(name="shapes")
  postprocessor = SemanticPostprocessor(is_thing=info.is_thing,
                                        label_divisor=info.label_divisor,
                                        ignore_label=info.ignore_label)
  evaluator = evaluator_lib.PanopticEvaluator(
      tf.distribute.get_strategy(), model=None, postprocessor=postprocessor,
      eval_dataset=tf.data.Dataset.range(1), dataset_info=info, model_dir=str(tmp_path),
      global_step=tf.Variable(0, dtype=tf.int64), num_summary_images=1)
  image = np.zeros([8, 8, 3], np.uint8)
  image[:6, :4] = 200  # The valid region is 6x4; the rest is padding.
  gt = np.full([12, 8], 3 * info.label_divisor, np.int32)        # stuff class 3
  pred = np.full([12, 8], 4 * info.label_divisor, np.int32)      # stuff class 4
  picture = evaluator._summary_picture(image, (6, 4), (12, 8), gt, pred)  # pylint: disable=protected-access
  assert picture.shape == (12, 24, 3) and picture.dtype == np.uint8
  np.testing.assert_array_equal(picture[:, :8], 200)  # Input, resized to the original.
  # Different classes -> different tints in the two overlays.
  assert not np.array_equal(picture[:, 8:16], picture[:, 16:])
  evaluator._summary_pictures = [picture]  # pylint: disable=protected-access
  evaluator._write_image_summaries(5)  # pylint: disable=protected-access
  events = glob.glob(str(tmp_path / "eval" / "events.*"))
  # TF2 image summaries hold [width, height, png] strings.
  images = [(v.tag, e.step, tf.image.decode_png(tf.make_ndarray(v.tensor)[2]).shape)
            for f in events for e in tf.compat.v1.train.summary_iterator(f)
            for v in e.summary.value]
  assert ("predictions/0", 5, (12, 24, 3)) in images


@pytest.mark.parametrize("block, bindings, expected", [
    # poly: base * (1 - step / total)^0.9; the warm-up (Model Garden's
    # LinearWarmup) rises linearly from 0 to the schedule's value at its end.
    ("poly.gin", "WARMUP_STEPS = 10", {0: 0.0, 5: 0.5 * (1 - 10 / 1000) ** 0.9,
                                       100: (1 - 100 / 1000) ** 0.9, 500: 0.5 ** 0.9}),
    # Keras' piecewise-constant decay changes value after each boundary step.
    ("step_85_95.gin", "WARMUP_STEPS = 0", {0: 1.0, 850: 1.0, 851: 0.1, 950: 0.1,
                                            951: 0.01, 999: 0.01}),
    ("panoptic_segformer_50ep.gin", "", {0: 1.0, 800: 1.0, 801: 0.1, 999: 0.1}),
])
def test_schedule_blocks(clean_state, block, bindings, expected):
  from tests.conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  gin.parse_config_files_and_bindings(
      [os.path.join(REPO_ROOT, "configs/schedules", block)],
      ["TRAIN_STEPS = 1000", "BASE_LEARNING_RATE = 1.0", "InputConfig.crop_size = (8, 8)"]
      + ([bindings] if bindings else []))
  schedule = optimizers.learning_rate_schedule()
  for step, lr in expected.items():
    np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-5, atol=1e-7,
                               err_msg=f"{block} at step {step}")
  assert experiment.ExperimentConfig().train_steps == 1000


@pytest.mark.parametrize("recipe", ["experiments/coco/kmax_r50_1281_150k.gin",
                                    "experiments/coco/panoptic_segformer_r50_50ep.gin"])
def test_tpu_overrides_apply_after_a_recipe(clean_state, recipe):
  from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  main_lib.parse_gin([os.path.join(REPO_ROOT, recipe),
                      os.path.join(REPO_ROOT, "tpu/overrides.gin")], [])
  config = experiment.ExperimentConfig()
  assert config.mixed_precision == "bfloat16" and config.jit_compile
  assert config.steps_per_loop == 1000
  assert gin.query_parameter("batch_norm.synchronized") is True


class _ShapesPredictor(_ToyPredictor):
  """_ToyPredictor with the shapes dataset's 5 classes + void."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.cls = keras.layers.Dense(6)


@pytest.mark.parametrize("mode, precision, policy, loss_scaled", [
    ("train", "float16", "mixed_float16", True),
    ("train", "bfloat16", "mixed_bfloat16", False),
    ("export", "bfloat16", "float32", False),     # exports and summaries stay float32
    ("train", None, "float32", False),
])
def test_experiment_sets_the_policy_and_the_loss_scale(clean_state, tmp_path, mode, precision,
                                                       policy, loss_scaled):
  for cls in (_ToyEncoder, _ToyDecoder, _ToyTransformerDecoder, _ShapesPredictor):
    gin.external_configurable(cls, module="test_scale")
  gin.parse_config(f"""
      dataset_info.name = 'shapes'
      MaskTransformer.pixel_encoder = @test_scale._ToyEncoder()
      MaskTransformer.pixel_decoder = @test_scale._ToyDecoder()
      MaskTransformer.transformer_decoder = @test_scale._ToyTransformerDecoder()
      MaskTransformer.predictor = @test_scale._ShapesPredictor()
      MaskTransformer.output_stride = 1
      ExperimentConfig.eval_input_size = (8, 8)
      ExperimentConfig.mixed_precision = {precision!r}
      learning_rate_schedule.total_steps = 10
      """)
  exp = experiment.Experiment(str(tmp_path), mode)
  assert keras.mixed_precision.global_policy().name == policy
  assert exp.model.pixel_encoder.conv.compute_dtype == policy.replace("mixed_", "")
  assert all(v.dtype == tf.float32 for v in exp.model.weights)
  group = exp._optimizer()  # pylint: disable=protected-access
  assert (group.loss_scale is not None) == loss_scaled
  assert ("loss_scale" in group.checkpoint_items()) == loss_scaled


class _DropPathEncoder(_ToyEncoder):
  """_ToyEncoder whose stride-2 branch goes through DropPath(0.5)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.drop = DropPath(0.5)

  def call(self, images, training=None):
    out = super().call(images, training=training)
    return {"stride1": out["stride1"], "stride2": self.drop(out["stride2"], training=training)}


def _drop_path_model(recompute):
  model = MaskTransformer(pixel_encoder=_DropPathEncoder(), pixel_decoder=_ToyDecoder(),
                          transformer_decoder=_ToyTransformerDecoder(),
                          predictor=_ToyPredictor(), output_stride=1, recompute=recompute)
  model(tf.zeros([1, 8, 8, 3]), training=False)
  return model


def test_recompute_replays_drop_path_masks(clean_state):
  keras.utils.set_random_seed(5)
  keras.backend.experimental.enable_tf_random_generator()
  plain = _drop_path_model(())
  recomputed = _drop_path_model(("pixel_encoder",))
  recomputed.set_weights(plain.get_weights())
  plain_gen = plain.pixel_encoder.drop._random_generator._generator  # pylint: disable=protected-access
  recomputed_gen = recomputed.pixel_encoder.drop._random_generator._generator  # pylint: disable=protected-access
  recomputed_gen.reset(plain_gen.state)
  images = tf.random.stateless_normal([8, 8, 8, 3], [6, 7])

  def gradients(model):
    with tf.GradientTape() as tape:
      out = model(images, training=True)
      loss = tf.reduce_sum(tf.square(out[common.PRED_MASK_LOGITS]))
    return tape.gradient(loss, model.trainable_variables)

  for step in range(2):  # Eager, then the same in a graph.
    run = gradients if step == 0 else tf.function(gradients)
    grads_a, grads_b = run(plain), run(recomputed)
    used = [(a, b) for a, b in zip(grads_a, grads_b) if a is not None]
    assert len(used) >= 6  # Encoder, decoder and mask-embedding weights.
    for a, b in used:
      np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    # Both streams advanced by the same single draw.
    np.testing.assert_array_equal(recomputed_gen.state.numpy(), plain_gen.state.numpy())


def test_recompute_refuses_unreplayable_random_layers(clean_state):
  model = _drop_path_model(("pixel_encoder",))  # Legacy global random ops.
  with pytest.raises(ValueError, match="cannot replay"):
    model(tf.zeros([2, 8, 8, 3]), training=True)
