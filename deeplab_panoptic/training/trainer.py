"""Orbit trainer: the train step, loss summaries and console progress."""

import re
import signal
import threading
import time
from typing import Callable, Dict, Optional

import numpy as np
import orbit
from orbit.utils import loop_fns
import tensorflow as tf
import tf_keras as keras
from absl import logging

from deeplab_panoptic import common
from deeplab_panoptic.training.optimizers import OptimizerGroup
from deeplab_panoptic.training.profiler import StepProfiler


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


class TrainingPreempted(SystemExit):
  """SIGTERM arrived: a checkpoint was saved and the process exits with 143.

  A SystemExit, so that ``main.py`` ends with the conventional status 128 + 15
  and a scheduler restarts the same command, which resumes from the checkpoint.
  """

  def __init__(self, message: str):
    super().__init__(143)
    self.message = message

  def __str__(self) -> str:
    return self.message


class PreemptionWatcher:
  """Records SIGTERM (a preemption notice) instead of dying at once.

  The trainer polls ``requested`` at the end of every loop of ``steps_per_loop``
  steps, so the grace period of the platform (about 30 s on Cloud VMs) must
  cover one loop plus one checkpoint write.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def request(self) -> None:
    self._event.set()

  def __enter__(self) -> "PreemptionWatcher":
    # Signal handlers can only be installed from the main thread.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.request())
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


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
    preemption: when given and SIGTERM has arrived, the end of the current loop
      raises TrainingPreempted (the caller saves a checkpoint).
    profiler: profiles the steps it names (``training/profiler.py``); the caller
      stops it when training ends early.
  """

  def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
               loss_fn: Callable, optimizer: OptimizerGroup, train_dataset,
               global_batch_size: int, total_steps: int, jit_compile: bool = False,
               preemption: Optional[PreemptionWatcher] = None,
               profiler: Optional[StepProfiler] = None):
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
    self._preemption = preemption
    self.profiler = profiler
    self._next_step = 0  # counted on the host while a profiler waits
    super().__init__(train_dataset, options=orbit.StandardTrainerOptions(
        use_tf_while_loop=False))

  def create_train_loop_fn(self):
    """orbit's Python loop of tf.function steps; with a profiler, each step between
    the profiler's calls."""
    if self.profiler is None:
      return super().create_train_loop_fn()
    step_fn = tf.function(self.train_step)
    profiler = self.profiler

    def profiled_step(iterator):
      step = self._next_step
      profiler.before_step(step)
      step_fn(iterator)
      if profiler.running and step >= profiler.last:
        self.global_step.numpy()  # The step's ops finish inside the profile.
      profiler.after_step(step)
      self._next_step += 1

    return loop_fns.create_loop_fn(profiled_step)

  def data_iterator(self):
    """The training iterator (created now if needed), for checkpointing its position."""
    if self._train_iter is None:
      self._train_iter = tf.nest.map_structure(iter, self.train_dataset)
    return self._train_iter

  def _metric(self, name: str) -> keras.metrics.Mean:
    if name not in self._metrics:
      with self.strategy.scope():
        self._metrics[name] = keras.metrics.Mean(name, dtype=tf.float32)
    return self._metrics[name]

  def create_metrics(self, batch) -> None:
    """Creates one Mean per loss term (outside tf.function, before the first step)."""
    outputs = float32_outputs(self.model(batch[common.IMAGE], training=True))
    for name in self.loss_fn(batch, outputs):
      self._metric(name)
    self._metric(_GRADIENT_NORM)

  def _create_metrics_from_spec(self) -> None:
    """Creates the loss metrics before the first step, from a trace of the loss.

    Metric variables cannot be created inside a replica function of a
    multi-replica strategy; tracing (not running) the model and the loss on the
    dataset's element spec gives the loss names without touching any state
    (no batch is consumed, no batch-norm statistic moves).
    """
    spec = tf.nest.map_structure(
        lambda s: s._value_specs[0] if hasattr(s, "_value_specs") else s,  # pylint: disable=protected-access
        self.train_dataset.element_spec)
    trace = tf.function(lambda batch: self.loss_fn(
        batch, float32_outputs(self.model(batch[common.IMAGE], training=True))))
    names = list(trace.get_concrete_function(spec).structured_outputs)
    for name in names:
      self._metric(name)
    self._metric(_GRADIENT_NORM)

  def train_loop_begin(self):
    if not self._metrics:
      self._create_metrics_from_spec()
    for m in self._metrics.values():
      m.reset_state()
    self._loop_start = time.time()
    self._loop_start_step = int(self.global_step.numpy())
    if self._run_start is None:
      self._run_start, self._run_start_step = self._loop_start, self._loop_start_step
    self._next_step = self._loop_start_step + 1

  def _forward_backward(self, batch):
    loss_scale = getattr(self.optimizer, "loss_scale", None)
    with tf.GradientTape() as tape:
      outputs = float32_outputs(self.model(batch[common.IMAGE], training=True))
      losses = self.loss_fn(batch, outputs)
      # Keras regularisation losses (none by default) join the total.
      total = losses[common.LOSS_TOTAL]
      if self.model.losses:
        total += tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses])
      scaled = total / self.strategy.num_replicas_in_sync
      if loss_scale is not None:
        # float16: small gradients would flush to zero without the scale.
        scaled = scaled * loss_scale()
    variables = self.model.trainable_variables
    grads = tape.gradient(scaled, variables)
    if loss_scale is not None:
      inverse = 1.0 / loss_scale()
      grads = [None if g is None else g * tf.cast(inverse, g.dtype) for g in grads]
    return losses, grads

  def train_step(self, iterator):
    def step_fn(batch):
      # XLA (and a TPU replica) takes no string tensor: names stay outside the step.
      batch = {k: v for k, v in batch.items() if v.dtype != tf.string}
      losses, grads = self._forward_backward_fn(batch)
      total = losses[common.LOSS_TOTAL]
      checks = []
      if not self._jit_compile:
        # Every term goes into the message, so the error names the culprit; the
        # update waits for the check, so the weights stay at the last good step.
        data = [_NON_FINITE_MARK, self.global_step + 1]
        for name, value in losses.items():
          data += [f"{name}=", value]
        checks.append(tf.debugging.Assert(tf.math.is_finite(total), data, summarize=1))
      with tf.control_dependencies(checks):
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
      for name, value in losses.items():
        self._metric(name).update_state(value)
      # This replica's gradient of the mean loss (undoing the 1/replicas scale);
      # with one replica it is the norm the optimizer sees.
      self._metric(_GRADIENT_NORM).update_state(
          tf.linalg.global_norm([g for g in grads if g is not None])
          * self.strategy.num_replicas_in_sync)

    self.strategy.run(step_fn, args=(next(iterator),))

  def train(self, num_steps):
    try:
      return super().train(num_steps)
    except tf.errors.InvalidArgumentError as e:
      if _NON_FINITE_MARK not in str(e):
        raise
      raise NonFiniteLossError(_non_finite_message(str(e))) from None

  def train_loop_end(self):
    logs = {f"losses/{name}": m.result() for name, m in self._metrics.items()
            if name != _GRADIENT_NORM}
    if _GRADIENT_NORM in self._metrics:
      logs["gradient_norm"] = self._metrics[_GRADIENT_NORM].result()
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
    logs["step_time_seconds"] = max(now - self._loop_start, 0.0) / loop_steps
    msg = (f"train | step {step:>6d}/{self.total_steps} | loss {total:.4f} | "
           f"lr {float(logs['learning_rate']):.2e} | {images_per_s:.1f} images/s | "
           f"ETA {_format_seconds(eta)}")
    print(msg, flush=True)
    logging.info(msg)
    if self._preemption is not None and self._preemption.requested:
      raise TrainingPreempted(f"train | SIGTERM received: stopping at step {step}")
    return logs


def float32_outputs(outputs):
  """The model's outputs with every floating tensor cast to float32.

  Under a mixed-precision policy (bfloat16 / float16) the model computes in the
  low precision; logits, losses and postprocessing stay in float32, where the
  softmaxes, the matching costs and the PQ-style losses keep their accuracy.
  Integer tensors and non-tensors pass through unchanged.
  """
  def cast(t):
    if isinstance(t, tf.Tensor) and t.dtype.is_floating and t.dtype != tf.float32:
      return tf.cast(t, tf.float32)
    return t
  return tf.nest.map_structure(cast, outputs)


_NON_FINITE_MARK = "Training loss is not finite at step"
_GRADIENT_NORM = "__gradient_norm"  # a metric name no loss term can take


def _non_finite_message(error: str) -> str:
  """One line from tf.debugging.Assert's text: ``[mark] [step] [name=] [value] ...``."""
  text = error[error.index("[" + _NON_FINITE_MARK):].splitlines()[0]
  fields = re.findall(r"\[([^\[\]]*)\]", text)
  step = fields[1] if len(fields) > 1 else "?"
  terms = ", ".join(f"{fields[i]}{fields[i + 1]}" for i in range(2, len(fields) - 1, 2))
  return (f"{_NON_FINITE_MARK} {step} ({terms}): stopping before its update; the last "
          "checkpoint holds the last good weights (lower the learning rate or check the data).")


def _format_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
