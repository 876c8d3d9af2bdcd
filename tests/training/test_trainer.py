"""The trainer's NaN/Inf stop, on a tiny Keras model in process."""

import gin
import numpy as np
import orbit
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.training import optimizers
from deeplab_panoptic.training import trainer as trainer_lib


def _loss_fn(batch, outputs):
  squared = tf.reduce_mean(tf.square(outputs - batch["target"]))
  return {common.LOSS_TOTAL: squared + 0.0 * tf.reduce_sum(batch[common.IMAGE]),
          "squared": squared}


def _build(tmp_path, bad_step):
  """A 1-layer model whose batch number ``bad_step`` (1-based) holds an Inf."""
  gin.clear_config()
  gin.parse_config("learning_rate_schedule.total_steps = 10\n"
                   "learning_rate_schedule.schedule = 'constant'\n"
                   "make_optimizer.name = 'adam'")
  images = np.ones([10, 2, 4, 4, 3], np.float32)
  images[bad_step - 1, 0, 0, 0, 0] = np.inf
  targets = np.zeros([10, 2, 1], np.float32)
  dataset = tf.data.Dataset.from_tensor_slices({common.IMAGE: images, "target": targets})
  strategy = tf.distribute.get_strategy()
  model = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
  model(tf.zeros([1, 4, 4, 3]))
  group = optimizers.OptimizerGroup([], model.trainable_variables,
                                    backbone_learning_rate_multiplier=1.0)
  trainer = trainer_lib.PanopticTrainer(
      strategy, model, _loss_fn, group, strategy.experimental_distribute_dataset(dataset),
      global_batch_size=2, total_steps=10)
  checkpoint = tf.train.Checkpoint(model=model, **group.checkpoint_items())
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=10,
                                       step_counter=group.iterations, checkpoint_interval=1)
  _build.last_trainer = trainer
  controller = orbit.Controller(strategy=strategy, trainer=trainer,
                                global_step=group.iterations, steps_per_loop=1,
                                checkpoint_manager=manager)
  return model, group, controller, manager


def test_non_finite_loss_names_step_and_terms_and_keeps_last_good_checkpoint(tmp_path):
  try:
    model, group, controller, manager = _build(tmp_path, bad_step=3)
    with pytest.raises(trainer_lib.NonFiniteLossError) as info:
      controller.train(10)
  finally:
    gin.clear_config()
  message = str(info.value)
  assert message.startswith("Training loss is not finite at step 3 ("), message
  assert "total_loss=" in message and "squared=" in message and "\n" not in message
  # The bad step's update was not applied: the weights are those after step 2,
  # finite, and the newest checkpoint is step 2's.
  assert int(group.iterations.numpy()) == 2
  assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
  assert manager.latest_checkpoint.endswith("ckpt-2")
  reader = tf.train.load_checkpoint(manager.latest_checkpoint)
  kernel = [k for k in reader.get_variable_to_shape_map() if "kernel" in k and "model" in k]
  assert kernel and np.isfinite(reader.get_tensor(kernel[0])).all()


def test_preemption_watcher_turns_sigterm_into_a_flag():
  import os
  import signal
  with trainer_lib.PreemptionWatcher() as watcher:
    assert not watcher.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.requested
  assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(
      signal.getsignal(signal.SIGTERM))


def test_loop_logs_hold_gradient_norm_step_time_and_losses(tmp_path):
  try:
    model, group, controller, manager = _build(tmp_path, bad_step=10)
    del controller, manager
    trainer = _build.last_trainer
    logs = trainer.train(tf.constant(2))
  finally:
    gin.clear_config()
  for key in ("losses/total_loss", "losses/squared", "learning_rate", "gradient_norm",
              "step_time_seconds", "images_per_second"):
    assert key in logs, sorted(logs)
  assert float(logs["gradient_norm"]) > 0.0
  assert float(logs["step_time_seconds"]) > 0.0
  assert "losses/__gradient_norm" not in logs
  assert int(group.iterations.numpy()) == 2 and model.built


def test_jit_compiled_step_runs_with_string_features_in_the_batch(tmp_path):
  """An XLA step cannot take the batch's image names: they are left out of it.

  The XLA-compiled step must give the same update as the plain one.
  """
  weights = []
  for jit in (False, True):
    gin.clear_config()
    gin.parse_config("learning_rate_schedule.total_steps = 4\n"
                     "learning_rate_schedule.schedule = 'constant'\n"
                     "make_optimizer.name = 'sgd'")
    try:
      rng = np.random.default_rng(0)
      dataset = tf.data.Dataset.from_tensor_slices({
          common.IMAGE: rng.normal(size=[4, 2, 4, 4, 3]).astype(np.float32),
          "target": rng.normal(size=[4, 2, 1]).astype(np.float32),
          common.IMAGE_NAME: np.array([[b"a.png", b"b.png"]] * 4)})
      strategy = tf.distribute.get_strategy()
      model = keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(1, kernel_initializer="ones")])
      model(tf.zeros([1, 4, 4, 3]))
      initial = [v.numpy() for v in model.trainable_variables]
      group = optimizers.OptimizerGroup([], model.trainable_variables,
                                        backbone_learning_rate_multiplier=1.0)
      trainer = trainer_lib.PanopticTrainer(
          strategy, model, _loss_fn, group, strategy.experimental_distribute_dataset(dataset),
          global_batch_size=2, total_steps=4, jit_compile=jit)
      controller = orbit.Controller(strategy=strategy, trainer=trainer,
                                    global_step=group.iterations, steps_per_loop=2)
      controller.train(4)
    finally:
      gin.clear_config()
    assert int(group.iterations.numpy()) == 4
    weights.append([v.numpy() for v in model.trainable_variables])
  for start, plain, compiled in zip(initial, *weights):
    assert np.abs(compiled - start).max() > 1e-3  # trained
    np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-6)
