"""Optimizers and learning-rate schedules, built from gin.

The backbone (pixel encoder) gets its own optimizer whose learning rate is the
main one times ``backbone_learning_rate_multiplier``: with Adam-style updates a
gradient scale would cancel out, so the multiplier must act on the learning rate.
Membership in the backbone is decided by module (``model.pixel_encoder``), not by
variable-name strings.
"""

import inspect
import re
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
                   use_ema: bool = False, ema_momentum: float = 0.999,
                   sma_threshold: float = 5.0, lookahead: bool = False,
                   lookahead_sync_period: int = 6, lookahead_slow_step_size: float = 0.5):
  """Builds one tf_keras optimizer.

  Args:
    learning_rate: a float or schedule.
    name: "adam", "adamw", "radam" (RAdam, tensorflow-addons' RectifiedAdam) or "sgd".
    weight_decay: decoupled weight decay (AdamW / SGD / RAdam).
    beta_1, beta_2, epsilon: Adam parameters (Keras defaults).
    momentum: SGD momentum.
    clipnorm: optional per-variable gradient norm clipping.
    use_ema, ema_momentum: exponential moving average of the weights.
    sma_threshold: RAdam's rectification threshold (tensorflow-addons' default).
    lookahead: wrap the optimizer in Lookahead (MaX-DeepLab: RAdam + Lookahead).
    lookahead_sync_period: Lookahead's k.
    lookahead_slow_step_size: Lookahead's alpha.
  """
  common_args = dict(clipnorm=clipnorm, use_ema=use_ema, ema_momentum=ema_momentum)
  if name == "adam":
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2,
                                      epsilon=epsilon, **common_args)
  elif name == "adamw":
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay,
                                       beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                                       **common_args)
  elif name == "radam":
    optimizer = RAdam(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                      weight_decay=weight_decay, sma_threshold=sma_threshold, **common_args)
  elif name == "sgd":
    optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum,
                                     weight_decay=weight_decay or None, **common_args)
  else:
    raise ValueError(f"Unknown optimizer make_optimizer.name={name!r}; "
                     "use 'adam', 'adamw', 'radam' or 'sgd'.")
  if lookahead:
    optimizer = Lookahead(optimizer, sync_period=lookahead_sync_period,
                          slow_step_size=lookahead_slow_step_size)
  return optimizer


def ema_enabled() -> bool:
  """Whether the gin configuration turns the optimizers' EMA on (``make_optimizer.use_ema``).

  Read without building an optimizer: evaluation and export need to know
  whether the checkpoint's averages are the weights to use.
  """
  bound = gin.get_bindings(make_optimizer)
  return bool(bound.get("use_ema", inspect.signature(make_optimizer).parameters["use_ema"]
                        .default))


def _low_rank(variable: tf.Variable) -> bool:
  """Norm scales/offsets and biases: rank < 2."""
  return variable.shape.rank is None or variable.shape.rank < 2


# Keras' own tracking lists: a path through them names no attribute of a part.
_TRACKING_ATTRIBUTES = frozenset(("_self_tracked_trackables", "_trainable_weights",
                                  "_non_trainable_weights"))


def variable_paths(module: tf.Module) -> Dict[int, List[str]]:
  """The attribute paths of each variable below ``module``, keyed by ``id``.

  A weight that a part creates in its constructor has a bare ``variable.name``
  (``level_embed:0`` in two different parts), so weight-decay patterns are
  matched against the path of attributes that leads to it instead, e.g.
  ``transformer_decoder/query_pos`` or ``pixel_encoder/stages/0/blocks/1/attn/
  relative_position_bias_table`` (list indices are path components).

  Args:
    module: the model.

  Returns:
    ``{id(variable): [path, ...]}``, every path through named attributes; a
    variable held only in Keras' own tracking lists has none (then its
    ``name`` is matched).
  """
  paths: Dict[int, List[str]] = {}
  # pylint: disable-next=protected-access
  for path, variable in module._flatten(predicate=lambda x: isinstance(x, tf.Variable),
                                        with_path=True):
    if _TRACKING_ATTRIBUTES.isdisjoint(p for p in path if isinstance(p, str)):
      paths.setdefault(id(variable), []).append("/".join(str(p) for p in path))
  return paths


def no_decay_variables(variables: Sequence[tf.Variable], patterns: Sequence[str],
                       paths: Optional[Dict[int, List[str]]], decay_low_rank: bool,
                       setting: str) -> List[tf.Variable]:
  """The variables that get no weight decay.

  Args:
    variables: one optimizer's variables.
    patterns: regular expressions; a variable any of whose paths (or, without a
      path, whose ``name``) one of them ``re.search``-es gets no weight decay.
    paths: ``variable_paths`` of the model, or None (names only).
    decay_low_rank: False: every rank < 2 variable gets no decay either.
    setting: the gin setting the patterns come from, for the error message.

  Returns:
    The excluded variables, in ``variables``' order.

  Raises:
    ValueError: a pattern is not a regular expression or matches none of
      ``variables`` (a typo would otherwise decay what it meant to spare).
  """
  def names(v):
    return (paths or {}).get(id(v)) or [v.name]

  excluded = {id(v) for v in variables if not decay_low_rank and _low_rank(v)}
  for pattern in patterns:
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{setting}: {pattern!r} is not a regular expression ({e}).") from e
    hits = [v for v in variables if any(regex.search(n) for n in names(v))]
    if not hits:
      example = names(variables[0])[0] if variables else "none"
      raise ValueError(f"{setting}: {pattern!r} matches no variable of its group "
                       f"({len(variables)} variables; paths look like {example!r}).")
    excluded.update(id(v) for v in hits)
  return [v for v in variables if id(v) in excluded]


@gin.configurable
class DynamicLossScale(tf.Module):
  """Dynamic loss scale for float16 training (the rule of Keras' LossScaleOptimizer).

  The loss is multiplied by ``scale`` before differentiation so that small float16
  gradients do not flush to zero; the gradients are divided by it again. A step
  whose (all-reduced) gradients hold an Inf/NaN is skipped and halves the scale;
  ``growth_steps`` finite steps in a row double it. One scale serves both
  optimizers of an OptimizerGroup, so both skip the same steps.

  Args:
    initial_scale: first scale (Keras: 2**15).
    growth_steps: finite steps before the scale grows (Keras: 2000).
    multiplier: growth / shrink factor.
  """

  def __init__(self, initial_scale: float = 2.0 ** 15, growth_steps: int = 2000,
               multiplier: float = 2.0):
    super().__init__(name="dynamic_loss_scale")
    self.growth_steps = int(growth_steps)
    self.multiplier = float(multiplier)
    # Aggregation NONE: every replica computes the same update from all-reduced
    # gradients, so nothing is summed across replicas.
    self.scale = tf.Variable(float(initial_scale), trainable=False, dtype=tf.float32,
                             name="current_loss_scale",
                             aggregation=tf.VariableAggregation.NONE)
    self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="good_steps",
                                  aggregation=tf.VariableAggregation.NONE)

  def __call__(self) -> tf.Tensor:
    """The current scale, a float32 scalar."""
    return tf.convert_to_tensor(self.scale)

  def update(self, is_finite: tf.Tensor) -> tf.Operation:
    """Grows or shrinks the scale after a step whose gradients were (not) finite."""
    def grow():
      grown = self.good_steps + 1 >= self.growth_steps
      new_scale = tf.where(grown, self.scale * self.multiplier, self.scale)
      # A scale that overflows float32 keeps its old value.
      new_scale = tf.where(tf.math.is_finite(new_scale), new_scale, self.scale)
      return tf.group(self.scale.assign(new_scale),
                      self.good_steps.assign(tf.where(grown, tf.constant(0, tf.int64),
                                                      self.good_steps + 1)))

    def shrink():
      return tf.group(self.scale.assign(tf.maximum(self.scale / self.multiplier, 1.0)),
                      self.good_steps.assign(0))

    return tf.cond(is_finite, grow, shrink)


def _all_finite(grads) -> tf.Tensor:
  return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])


@gin.configurable
class OptimizerGroup(tf.Module):
  """One optimizer for the backbone and one for the rest, with a learning-rate ratio.

  Args:
    backbone_variables: variables of the pixel encoder.
    other_variables: every other trainable variable.
    backbone_learning_rate_multiplier: backbone learning rate / main learning rate.
    loss_scale: a DynamicLossScale for float16 training (set by the experiment when
      ``ExperimentConfig.mixed_precision = 'float16'``), else None. The trainer
      multiplies the loss by it and divides the gradients by it; a step with
      non-finite gradients is skipped by both optimizers (the step counters still
      advance, as Keras' LossScaleOptimizer does).
    global_clipnorm: optional maximum L2 norm of the whole model's gradient (all
      variables of both groups together, after the replicas' gradients are summed):
      PyTorch's ``clip_grad_norm_(model.parameters(), max_norm)``, which Deformable
      DETR / Panoptic SegFormer (max_norm 0.1) and Mask2Former (detectron2's
      ``CLIP_TYPE: full_model``, 0.01) clip with. ``make_optimizer``'s
      ``clipnorm`` / ``global_clipnorm`` instead clip each group's gradients alone,
      before the all-reduce.
    no_weight_decay_patterns: regular expressions naming the variables outside
      the pixel encoder that get no weight decay (see ``no_decay_variables``),
      matched against ``variable_paths`` (e.g. Mask2Former's
      ``^transformer_decoder/(query_features|query_pos|level_embed)$``: its
      ``nn.Embedding`` weights, detectron2's ``WEIGHT_DECAY_EMBED``). Each must
      match at least one variable.
    backbone_no_weight_decay_patterns: the same for the pixel encoder (Swin's
      ``relative_position_bias_table``).
    decay_low_rank_variables: False (default): every rank < 2 variable (norm
      scales / offsets, biases) gets no weight decay. True: only the patterns
      exclude; detectron2's optimizer (Mask2Former's ``train_net.py``) decays
      biases and spares norms, which a pattern then names.
    variable_paths: ``variable_paths(model)``, given by the experiment; without
      it the patterns are matched against ``variable.name``.
  """

  def __init__(self, backbone_variables: List[tf.Variable],
               other_variables: List[tf.Variable],
               backbone_learning_rate_multiplier: float = 0.1,
               loss_scale: Optional[DynamicLossScale] = None,
               global_clipnorm: Optional[float] = None,
               no_weight_decay_patterns: Sequence[str] = (),
               backbone_no_weight_decay_patterns: Sequence[str] = (),
               decay_low_rank_variables: bool = False,
               variable_paths: Optional[Dict[int, List[str]]] = None):
    super().__init__(name="optimizer_group")
    if global_clipnorm is not None and not global_clipnorm > 0:
      raise ValueError("OptimizerGroup.global_clipnorm must be a positive number or None, "
                       f"got {global_clipnorm!r}.")
    self.loss_scale = loss_scale
    self.global_clipnorm = global_clipnorm
    self.learning_rate = learning_rate_schedule()
    self.main = make_optimizer(self.learning_rate)
    self.backbone = make_optimizer(
        learning_rate_schedule(multiplier=backbone_learning_rate_multiplier))
    groups = ((self.main, other_variables, no_weight_decay_patterns,
               "OptimizerGroup.no_weight_decay_patterns"),
              (self.backbone, backbone_variables, backbone_no_weight_decay_patterns,
               "OptimizerGroup.backbone_no_weight_decay_patterns"))
    for opt, variables, patterns, setting in groups:
      excluded = no_decay_variables(variables, patterns, variable_paths,
                                    decay_low_rank_variables, setting)
      if hasattr(opt, "exclude_from_weight_decay"):
        opt.exclude_from_weight_decay(var_list=excluded)
      opt.build(variables)
    self._backbone_ids = {id(v) for v in backbone_variables}

  @property
  def iterations(self) -> tf.Variable:
    return self.main.iterations

  def current_learning_rate(self) -> tf.Tensor:
    return self.learning_rate(self.main.iterations) if callable(self.learning_rate) \
        else tf.constant(self.learning_rate)

  def apply_gradients(self, grads_and_vars) -> None:
    """Applies (unscaled) gradients; called in a replica context."""
    if self.loss_scale is None and self.global_clipnorm is None:
      self._apply_split(list(grads_and_vars))
      return
    pairs = [(g, v) for g, v in grads_and_vars if g is not None]
    # All-reduce first, so every replica sees the same finiteness and all skip
    # (or apply) the same step, and the clip sees the whole model's gradient;
    # the optimizers then skip their own aggregation.
    pairs = list(self.main.aggregate_gradients(pairs))
    grads = [g for g, _ in pairs]
    variables = [v for _, v in pairs]
    if self.global_clipnorm is not None:
      grads = tf.clip_by_global_norm(grads, self.global_clipnorm)[0]
    if self.loss_scale is None:
      self._apply_split(list(zip(grads, variables)), skip_gradients_aggregation=True)
      return

    def apply():
      self._apply_split(list(zip(grads, variables)), skip_gradients_aggregation=True)

    def skip():
      # The counters still advance, so both schedules stay at the global step.
      self.main.iterations.assign_add(1, read_value=False)
      if self._backbone_ids:
        self.backbone.iterations.assign_add(1, read_value=False)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
      is_finite = _all_finite(grads)
      self.loss_scale.update(is_finite)
      tf.__internal__.smart_cond.smart_cond(is_finite, apply, skip)
      return

    def cross_replica(distribution, per_replica_grads):
      # A cond whose branch calls apply_gradients (which merge_calls) must run
      # in the cross-replica context; the grads are all-reduced, so replica 0's
      # finiteness is everyone's.
      finite = distribution.experimental_local_results(
          distribution.extended.call_for_each_replica(_all_finite,
                                                      args=(per_replica_grads,)))[0]
      self.loss_scale.update(finite)

      def apply_all():
        distribution.extended.call_for_each_replica(
            lambda g: self._apply_split(list(zip(g, variables)),
                                        skip_gradients_aggregation=True),
            args=(per_replica_grads,))

      tf.__internal__.smart_cond.smart_cond(finite, apply_all, skip)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(grads,))

  def _apply_split(self, grads_and_vars, **kwargs) -> None:
    main, backbone = [], []
    for g, v in grads_and_vars:
      if g is None:
        continue
      (backbone if id(v) in self._backbone_ids else main).append((g, v))
    self.main.apply_gradients(main, **kwargs)
    if backbone:
      self.backbone.apply_gradients(backbone, **kwargs)

  def moving_averages(self, variables: Sequence[tf.Variable]) -> Optional[List[tf.Variable]]:
    """The optimizers' EMA variable of each of ``variables``, or None without EMA.

    tf_keras keeps one average per variable an optimizer was built on
    (``Optimizer._model_variables_moving_average``, in the order of its build's
    ``var_list``), updated after every step with ``ema_momentum``; Lookahead's
    is its inner optimizer's.

    Args:
      variables: trainable variables this group updates, in any order.

    Returns:
      Their averages, in the same order (float variables of the same shapes).
    """
    averages = []
    for variable in variables:
      optimizer = self.backbone if id(variable) in self._backbone_ids else self.main
      optimizer = getattr(optimizer, "inner_optimizer", optimizer)
      if not optimizer.use_ema:
        return None
      # pylint: disable=protected-access
      index = optimizer._index_dict[optimizer._var_key(variable)]
      averages.append(optimizer._model_variables_moving_average[index])
      # pylint: enable=protected-access
    return averages

  def checkpoint_items(self) -> Dict[str, tf.Module]:
    items = {"optimizer": self.main, "backbone_optimizer": self.backbone}
    if self.loss_scale is not None:
      items["loss_scale"] = self.loss_scale
    return items


# ----------------------------------------------------------------------------
# RAdam and Lookahead: tensorflow-addons' `RectifiedAdam` and `Lookahead` (the
# package supports only TF <= 2.15) as tf_keras optimizers, with the same
# constructor arguments and update rule.


def _value_at(value, step: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """A float hyper-parameter, or a schedule evaluated at ``step``, as ``dtype``."""
  if isinstance(value, keras.optimizers.schedules.LearningRateSchedule) or callable(value):
    value = value(step)
  return _as(value, dtype)


def _as(value, dtype: tf.DType) -> tf.Tensor:
  """``value`` as ``dtype``; Python numbers convert directly (tf.cast would go
  through float32 first and round float64 hyper-parameters)."""
  if isinstance(value, (int, float)):
    return tf.constant(value, dtype)
  return tf.cast(value, dtype)


@gin.configurable
class RAdam(keras.optimizers.Optimizer):
  """Rectified Adam (Liu et al. 2020), the update of tensorflow-addons' ``RectifiedAdam``.

  With ``t`` the 1-based step, ``rho_inf = 2 / (1 - beta_2) - 1`` and
  ``rho_t = rho_inf - 2 t beta_2^t / (1 - beta_2^t)``, each step does::

    m = beta_1 m + (1 - beta_1) g          m_hat = m / (1 - beta_1^t)
    v = beta_2 v + (1 - beta_2) g^2        v_hat = sqrt(v / (1 - beta_2^t))   (amsgrad: max of v)
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    u = r_t m_hat / (v_hat + epsilon)  if rho_t >= sma_threshold  else  m_hat
    var -= lr_t (u + weight_decay var)

  where ``lr_t`` is the learning rate, optionally with the optimizer's own linear
  warm-up over ``warmup_proportion * total_steps`` and linear decay to ``min_lr``
  at ``total_steps`` (when ``total_steps > 0``, as tensorflow-addons).

  Weight decay follows tensorflow-addons (added to the update, scaled by the
  learning rate); variables passed to ``exclude_from_weight_decay`` get none.

  Args:
    learning_rate: float or schedule of the step.
    beta_1: decay of the first moment.
    beta_2: decay of the second moment.
    epsilon: added to the denominator after the square root.
    weight_decay: float or schedule; decoupled weight decay scaled by lr.
    amsgrad: use the maximum of past second moments.
    sma_threshold: the rectification applies once rho_t reaches this value.
    total_steps: > 0 enables the built-in warm-up and decay of the rate.
    warmup_proportion: fraction of ``total_steps`` spent warming up.
    min_lr: rate reached at ``total_steps``.
    name: optimizer name.
    **kwargs: tf_keras Optimizer arguments (clipnorm, global_clipnorm, use_ema,
      ema_momentum, jit_compile, ...).
  """

  def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999,
               epsilon: float = 1e-7, weight_decay=0.0, amsgrad: bool = False,
               sma_threshold: float = 5.0, total_steps: int = 0,
               warmup_proportion: float = 0.1, min_lr: float = 0.0,
               name: str = "RectifiedAdam", **kwargs):
    # The base class's own weight decay would use the undecayed rate and run
    # before the update; ours follows tensorflow-addons inside update_step.
    kwargs.pop("weight_decay", None)
    super().__init__(name=name, weight_decay=None, **kwargs)
    self._learning_rate = self._build_learning_rate(learning_rate)
    self.beta_1 = beta_1
    self.beta_2 = beta_2
    self.epsilon = epsilon
    self.decoupled_weight_decay = weight_decay
    self.amsgrad = amsgrad
    self.sma_threshold = sma_threshold
    self.total_steps = int(total_steps)
    self.warmup_proportion = warmup_proportion
    self.min_lr = min_lr

  def build(self, var_list: Sequence[tf.Variable]) -> None:
    """Creates the first and second moments (and their maximum with amsgrad)."""
    super().build(var_list)
    if getattr(self, "_built", False):
      return
    self._built = True
    self._momentums = [self.add_variable_from_reference(v, "m") for v in var_list]
    self._velocities = [self.add_variable_from_reference(v, "v") for v in var_list]
    if self.amsgrad:
      self._velocity_hats = [self.add_variable_from_reference(v, "vhat") for v in var_list]

  def update_step(self, gradient, variable) -> None:
    """One RAdam update of ``variable`` (any shape) with ``gradient`` (same shape)."""
    dtype = variable.dtype
    if isinstance(gradient, tf.IndexedSlices):
      # tensorflow-addons' sparse update also decays every row of m, v and var.
      gradient = tf.convert_to_tensor(gradient)
    gradient = tf.cast(gradient, dtype)
    index = self._index_dict[self._var_key(variable)]
    m = self._momentums[index]
    v = self._velocities[index]
    lr = tf.cast(self.learning_rate, dtype)
    beta_1 = _as(self.beta_1, dtype)
    beta_2 = _as(self.beta_2, dtype)
    local_step = tf.cast(self.iterations + 1, dtype)
    beta_1_power = tf.pow(beta_1, local_step)
    beta_2_power = tf.pow(beta_2, local_step)

    if self.total_steps > 0:
      total_steps = _as(self.total_steps, dtype)
      warmup_steps = total_steps * _as(self.warmup_proportion, dtype)
      decay_steps = tf.maximum(total_steps - warmup_steps, 1.0)
      decay_rate = (_as(self.min_lr, dtype) - lr) / decay_steps
      lr = tf.where(local_step <= warmup_steps, lr * (local_step / warmup_steps),
                    lr + decay_rate * tf.minimum(local_step - warmup_steps, decay_steps))

    sma_inf = 2.0 / (1.0 - beta_2) - 1.0
    sma_t = sma_inf - 2.0 * local_step * beta_2_power / (1.0 - beta_2_power)

    m.assign(beta_1 * m + (1.0 - beta_1) * gradient)
    m_corr = m / (1.0 - beta_1_power)
    v.assign(beta_2 * v + (1.0 - beta_2) * tf.square(gradient))
    if self.amsgrad:
      v_hat = self._velocity_hats[index]
      v_hat.assign(tf.maximum(v_hat, v))
      v_corr = tf.sqrt(v_hat / (1.0 - beta_2_power))
    else:
      v_corr = tf.sqrt(v / (1.0 - beta_2_power))
    # Before the threshold rho_t - 4 can be negative: the sqrt is NaN there but
    # tf.where discards it (as in tensorflow-addons).
    r_t = tf.sqrt((sma_t - 4.0) / (sma_inf - 4.0) * (sma_t - 2.0) / (sma_inf - 2.0)
                  * sma_inf / sma_t)
    update = tf.where(sma_t >= _as(self.sma_threshold, dtype),
                      r_t * m_corr / (v_corr + _as(self.epsilon, dtype)), m_corr)
    if self._has_weight_decay() and self._use_weight_decay(variable):
      update += _value_at(self.decoupled_weight_decay, self.iterations, dtype) * variable
    variable.assign_sub(lr * update)

  def _has_weight_decay(self) -> bool:
    wd = self.decoupled_weight_decay
    return callable(wd) or float(wd) != 0.0

  def get_config(self) -> dict:
    config = super().get_config()
    wd = self.decoupled_weight_decay
    config.update({
        "learning_rate": self._serialize_hyperparameter(self._learning_rate),
        "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
        "weight_decay": (keras.optimizers.schedules.serialize(wd)
                         if isinstance(wd, keras.optimizers.schedules.LearningRateSchedule)
                         else wd),
        "amsgrad": self.amsgrad, "sma_threshold": self.sma_threshold,
        "total_steps": self.total_steps, "warmup_proportion": self.warmup_proportion,
        "min_lr": self.min_lr,
    })
    return config


@gin.configurable
class Lookahead(keras.optimizers.Optimizer):
  """Lookahead (Zhang et al. 2019) around any tf_keras optimizer, as tensorflow-addons.

  The wrapped ("fast") optimizer updates the variables every step; slow copies
  start at the variables' values before the first step, and every
  ``sync_period`` steps (when the 1-based step is a multiple of it)::

    slow = slow + slow_step_size (var - slow);  var = slow

  The step counter is the wrapped optimizer's (``iterations``), so learning-rate
  schedules and checkpoints see one count.

  Args:
    optimizer: the wrapped tf_keras optimizer (or its name / config for
      ``keras.optimizers.get``).
    sync_period: fast steps between synchronisations (k).
    slow_step_size: interpolation factor of the slow weights (alpha).
    name: optimizer name.
  """

  def __init__(self, optimizer, sync_period: int = 6, slow_step_size: float = 0.5,
               name: str = "Lookahead", **kwargs):
    super().__init__(name=name, weight_decay=None, jit_compile=False, **kwargs)
    if isinstance(optimizer, (str, dict)):
      optimizer = keras.optimizers.get(optimizer)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
      raise TypeError(f"Lookahead wraps a tf_keras optimizer, got {type(optimizer).__name__}.")
    if int(sync_period) < 1:
      raise ValueError(f"Lookahead sync_period must be >= 1, got {sync_period}.")
    if not 0.0 <= slow_step_size <= 1.0:
      raise ValueError(f"Lookahead slow_step_size must be in [0, 1], got {slow_step_size}.")
    self._optimizer = optimizer
    self.sync_period = int(sync_period)
    self.slow_step_size = float(slow_step_size)

  def _create_iteration_variable(self) -> None:
    # The wrapped optimizer's counter is the only one (see `iterations`).
    pass

  @property
  def inner_optimizer(self) -> keras.optimizers.Optimizer:
    return self._optimizer

  @property
  def iterations(self) -> tf.Variable:
    return self._optimizer.iterations

  @property
  def learning_rate(self):
    return self._optimizer.learning_rate

  def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
    self._optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

  def build(self, var_list: Sequence[tf.Variable]) -> None:
    """Builds the wrapped optimizer and one slow copy per variable."""
    self._optimizer.build(var_list)
    if getattr(self, "_built", False):
      return
    super().build(var_list)
    self._built = True
    self._slow_weights = [
        self.add_variable_from_reference(v, "slow", initial_value=v) for v in var_list]

  def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                      **kwargs):
    """Applies the wrapped optimizer, then the Lookahead synchronisation."""
    grads_and_vars = [(g, v) for g, v in grads_and_vars if g is not None]
    if not grads_and_vars:
      return self.iterations
    variables = [v for _, v in grads_and_vars]
    with tf.init_scope():
      self.build(variables)
    # Before the first step ever, the slow weights take the variables' current
    # values: tensorflow-addons creates them lazily there, so a warm start that
    # restores weights after build is still followed.
    self._update_slow(variables, first_step=True)
    self._optimizer.apply_gradients(
        grads_and_vars, name=name, skip_gradients_aggregation=skip_gradients_aggregation,
        **kwargs)
    self._update_slow(variables, first_step=False)
    return self.iterations

  def _update_slow(self, variables: Sequence[tf.Variable], first_step: bool) -> None:
    def distributed_fn(distribution, variables, **unused_kwargs):
      for variable in variables:
        slow = self._slow_weights[self._index_dict[self._var_key(variable)]]
        fn = self._copy_on_first_step if first_step else self._synchronise
        distribution.extended.update(variable, fn, args=(slow,), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        distributed_fn, self._distribution_strategy, variables)

  def _copy_on_first_step(self, variable, slow) -> None:
    slow.assign(tf.where(tf.equal(self.iterations, 0), variable, slow))

  def _synchronise(self, variable, slow) -> None:
    # Runs after the fast update, so `iterations` is already the 1-based step.
    sync = tf.equal(self.iterations % self.sync_period, 0)
    step_back = slow + _as(self.slow_step_size, variable.dtype) * (variable - slow)
    slow.assign(tf.where(sync, step_back, slow))
    variable.assign(tf.where(sync, step_back, variable))

  def finalize_variable_values(self, var_list) -> None:
    self._optimizer.finalize_variable_values(var_list)

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({"optimizer": keras.optimizers.serialize(self._optimizer),
                   "sync_period": self.sync_period,
                   "slow_step_size": self.slow_step_size})
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    optimizer = keras.optimizers.deserialize(config.pop("optimizer"),
                                             custom_objects=custom_objects)
    for key in ("is_legacy_optimizer", "weight_decay", "jit_compile"):
      config.pop(key, None)
    return cls(optimizer, **config)
