"""Orbit trainer: the train step, loss summaries and console progress."""

import time
from typing import Callable, Dict, Optional

import numpy as np
import orbit
import tensorflow as tf
import tf_keras as keras
from absl import logging

from deeplab_panoptic import common
from deeplab_panoptic.training.optimizers import OptimizerGroup


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


class PanopticTrainer(orbit.StandardTrainer):
  """Trains a mask transformer with a dict-valued loss.

  Args:
    strategy: the distribution strategy the model was built under.
    model: the MaskTransformer.
    loss_fn: ``(batch, outputs) -> {loss name: scalar}`` with common.LOSS_TOTAL.
    optimizer: the OptimizerGroup.
    train_dataset: a (distributed) dataset of batches (common.py keys).
    global_batch_size: images per step over all replicas.
    total_steps: the run's length, for the ETA.
    jit_compile: compile the per-replica step with XLA (needs an XLA-compilable
      loss, i.e. the "tpu" matcher).
  """

  def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
               loss_fn: Callable, optimizer: OptimizerGroup, train_dataset,
               global_batch_size: int, total_steps: int, jit_compile: bool = False):
    self.strategy = strategy
    self.model = model
    self.loss_fn = loss_fn
    self.optimizer = optimizer
    self.global_step = optimizer.iterations
    self.global_batch_size = global_batch_size
    self.total_steps = total_steps
    self._metrics: Dict[str, keras.metrics.Mean] = {}
    self._jit_compile = jit_compile
    self._forward_backward_fn = (tf.function(self._forward_backward, jit_compile=True)
                                 if jit_compile else self._forward_backward)
    self._loop_start: Optional[float] = None
    self._loop_start_step = 0
    self._run_start: Optional[float] = None
    self._run_start_step = 0
    super().__init__(train_dataset, options=orbit.StandardTrainerOptions(
        use_tf_while_loop=False))

  def _metric(self, name: str) -> keras.metrics.Mean:
    if name not in self._metrics:
      with self.strategy.scope():
        self._metrics[name] = keras.metrics.Mean(name, dtype=tf.float32)
    return self._metrics[name]

  def create_metrics(self, batch) -> None:
    """Creates one Mean per loss term (outside tf.function, before the first step)."""
    outputs = self.model(batch[common.IMAGE], training=True)
    for name in self.loss_fn(batch, outputs):
      self._metric(name)

  def train_loop_begin(self):
    for m in self._metrics.values():
      m.reset_state()
    self._loop_start = time.time()
    self._loop_start_step = int(self.global_step.numpy())
    if self._run_start is None:
      self._run_start, self._run_start_step = self._loop_start, self._loop_start_step

  def _forward_backward(self, batch):
    with tf.GradientTape() as tape:
      outputs = self.model(batch[common.IMAGE], training=True)
      losses = self.loss_fn(batch, outputs)
      # Keras regularisation losses (none by default) join the total.
      total = losses[common.LOSS_TOTAL]
      if self.model.losses:
        total += tf.add_n(self.model.losses)
      scaled = total / self.strategy.num_replicas_in_sync
    variables = self.model.trainable_variables
    grads = tape.gradient(scaled, variables)
    return losses, grads

  def train_step(self, iterator):
    def step_fn(batch):
      losses, grads = self._forward_backward_fn(batch)
      total = losses[common.LOSS_TOTAL]
      if not self._jit_compile:
        tf.debugging.Assert(tf.math.is_finite(total), [
            "Training loss is not finite at step", self.global_step + 1, "total:", total])
      self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
      for name, value in losses.items():
        self._metric(name).update_state(value)

    self.strategy.run(step_fn, args=(next(iterator),))

  def train_loop_end(self):
    logs = {f"losses/{name}": m.result() for name, m in self._metrics.items()}
    step = int(self.global_step.numpy())
    total = float(self._metrics[common.LOSS_TOTAL].result()) \
        if common.LOSS_TOTAL in self._metrics else float("nan")
    if not np.isfinite(total):
      raise NonFiniteLossError(
          f"Training loss is {total} in the steps {self._loop_start_step + 1}..{step}: "
          "stopping (lower the learning rate or check the data).")
    logs["learning_rate"] = self.optimizer.current_learning_rate()
    now = time.time()
    loop_steps = max(step - self._loop_start_step, 1)
    images_per_s = loop_steps * self.global_batch_size / max(now - self._loop_start, 1e-9)
    run_rate = (step - self._run_start_step) / max(now - self._run_start, 1e-9)
    eta = (self.total_steps - step) / run_rate if run_rate > 0 else float("inf")
    logs["images_per_second"] = images_per_s
    msg = (f"train | step {step:>6d}/{self.total_steps} | loss {total:.4f} | "
           f"lr {float(logs['learning_rate']):.2e} | {images_per_s:.1f} images/s | "
           f"ETA {_format_seconds(eta)}")
    print(msg, flush=True)
    logging.info(msg)
    return logs


def _format_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
