"""Optimizers and learning-rate schedules, built from gin.

The backbone (pixel encoder) gets its own optimizer whose learning rate is the
main one times ``backbone_learning_rate_multiplier``: with Adam-style updates a
gradient scale would cancel out, so the multiplier must act on the learning rate.
Membership in the backbone is decided by module (``model.pixel_encoder``), not by
variable-name strings.
"""

from typing import Dict, List, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras
from official.modeling.optimization import lr_schedule


@gin.configurable
def learning_rate_schedule(base_learning_rate: float = 1e-3, total_steps: int = gin.REQUIRED,
                           schedule: str = "poly", warmup_steps: int = 0,
                           poly_power: float = 0.9, end_learning_rate: float = 0.0,
                           step_boundaries_fraction: Sequence[float] = (0.85, 0.95),
                           step_decay: float = 0.1, multiplier: float = 1.0):
  """Builds a learning-rate schedule with optional linear warm-up from 0.

  Args:
    base_learning_rate: peak learning rate.
    total_steps: training steps; the decay reaches its end here.
    schedule: "poly" (counted from step 0, as deeplab2), "cosine", "step" or "constant".
    warmup_steps: linear warm-up from 0 over this many steps (0 = none).
    poly_power: power of the poly schedule.
    end_learning_rate: final learning rate of poly / cosine.
    step_boundaries_fraction: for "step", the fractions of total_steps where the
      rate is multiplied by ``step_decay``.
    step_decay: factor of the step schedule.
    multiplier: scales the whole schedule (the backbone multiplier).
  """
  lr = base_learning_rate * multiplier
  if schedule == "poly":
    sched = keras.optimizers.schedules.PolynomialDecay(
        lr, total_steps, end_learning_rate * multiplier, power=poly_power)
  elif schedule == "cosine":
    sched = keras.optimizers.schedules.CosineDecay(
        lr, total_steps, alpha=end_learning_rate / max(base_learning_rate, 1e-12))
  elif schedule == "step":
    boundaries = [int(f * total_steps) for f in step_boundaries_fraction]
    values = [lr * step_decay ** i for i in range(len(boundaries) + 1)]
    sched = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
  elif schedule == "constant":
    sched = lr
  else:
    raise ValueError(f"Unknown learning-rate schedule {schedule!r}; "
                     "use 'poly', 'cosine', 'step' or 'constant'.")
  if warmup_steps > 0:
    sched = lr_schedule.LinearWarmup(sched, warmup_steps, 0.0)
  return sched


@gin.configurable
def make_optimizer(learning_rate, name: str = "adamw", weight_decay: float = 0.0,
                   beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                   momentum: float = 0.9, clipnorm: Optional[float] = None,
                   use_ema: bool = False, ema_momentum: float = 0.999):
  """Builds one tf_keras optimizer.

  Args:
    learning_rate: a float or schedule.
    name: "adam", "adamw" or "sgd".
    weight_decay: decoupled weight decay (AdamW / SGD).
    beta_1, beta_2, epsilon: Adam parameters (Keras defaults).
    momentum: SGD momentum.
    clipnorm: optional per-variable gradient norm clipping.
    use_ema, ema_momentum: exponential moving average of the weights.
  """
  common_args = dict(clipnorm=clipnorm, use_ema=use_ema, ema_momentum=ema_momentum)
  if name == "adam":
    return keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2,
                                 epsilon=epsilon, **common_args)
  if name == "adamw":
    return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, beta_1=beta_1,
                                  beta_2=beta_2, epsilon=epsilon, **common_args)
  if name == "sgd":
    return keras.optimizers.SGD(learning_rate, momentum=momentum,
                                weight_decay=weight_decay or None, **common_args)
  raise ValueError(f"Unknown optimizer {name!r}; use 'adam', 'adamw' or 'sgd'.")


def _no_decay(variable: tf.Variable) -> bool:
  """Norm scales/offsets, biases and embeddings (rank < 2) get no weight decay."""
  return variable.shape.rank is None or variable.shape.rank < 2


@gin.configurable
class OptimizerGroup(tf.Module):
  """One optimizer for the backbone and one for the rest, with a learning-rate ratio.

  Args:
    backbone_variables: variables of the pixel encoder.
    other_variables: every other trainable variable.
    backbone_learning_rate_multiplier: backbone learning rate / main learning rate.
  """

  def __init__(self, backbone_variables: List[tf.Variable],
               other_variables: List[tf.Variable],
               backbone_learning_rate_multiplier: float = 0.1):
    super().__init__(name="optimizer_group")
    self.learning_rate = learning_rate_schedule()
    self.main = make_optimizer(self.learning_rate)
    self.backbone = make_optimizer(
        learning_rate_schedule(multiplier=backbone_learning_rate_multiplier))
    for opt, variables in ((self.main, other_variables), (self.backbone, backbone_variables)):
      if hasattr(opt, "exclude_from_weight_decay"):
        opt.exclude_from_weight_decay(var_list=[v for v in variables if _no_decay(v)])
      opt.build(variables)
    self._backbone_ids = {id(v) for v in backbone_variables}

  @property
  def iterations(self) -> tf.Variable:
    return self.main.iterations

  def current_learning_rate(self) -> tf.Tensor:
    return self.learning_rate(self.main.iterations) if callable(self.learning_rate) \
        else tf.constant(self.learning_rate)

  def apply_gradients(self, grads_and_vars) -> None:
    main, backbone = [], []
    for g, v in grads_and_vars:
      if g is None:
        continue
      (backbone if id(v) in self._backbone_ids else main).append((g, v))
    self.main.apply_gradients(main)
    if backbone:
      self.backbone.apply_gradients(backbone)

  def checkpoint_items(self) -> Dict[str, tf.Module]:
    return {"optimizer": self.main, "backbone_optimizer": self.backbone}
