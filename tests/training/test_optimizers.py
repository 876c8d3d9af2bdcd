"""RAdam and Lookahead against updates computed by hand (numpy) from the papers.

The reference follows the published algorithms as tensorflow-addons implements
them (RectifiedAdam: Liu et al. 2020, Algorithm 2; Lookahead: Zhang et al. 2019,
Algorithm 1), which our optimizers promise to reproduce.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.training import optimizers

STEPS = 12  # rho_t passes the threshold 5 at t = 6 for beta_2 = 0.999.


def _gradients(shape, steps, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape).astype(np.float64) for _ in range(steps)]


def radam_reference(var, grads, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                    weight_decay=0.0, amsgrad=False, sma_threshold=5.0, total_steps=0,
                    warmup_proportion=0.1, min_lr=0.0):
  """Rectified Adam by hand; returns the variable after each step."""
  lr = float(np.float32(learning_rate))  # tf_keras keeps the learning rate in a float32 variable.
  var = np.array(var, np.float64)
  m = np.zeros_like(var)
  v = np.zeros_like(var)
  v_max = np.zeros_like(var)
  rho_inf = 2.0 / (1.0 - beta_2) - 1.0
  out = []
  for t, g in enumerate(grads, start=1):
    lr_t = lr
    if total_steps > 0:
      warmup = total_steps * warmup_proportion
      decay_steps = max(total_steps - warmup, 1)
      if t <= warmup:
        lr_t = lr * t / warmup
      else:
        lr_t = lr + (min_lr - lr) / decay_steps * min(t - warmup, decay_steps)
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g * g
    m_hat = m / (1 - beta_1 ** t)
    if amsgrad:
      v_max = np.maximum(v_max, v)
      v_hat = np.sqrt(v_max / (1 - beta_2 ** t))
    else:
      v_hat = np.sqrt(v / (1 - beta_2 ** t))
    rho_t = rho_inf - 2 * t * beta_2 ** t / (1 - beta_2 ** t)
    if rho_t >= sma_threshold:
      r_t = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf /
                    ((rho_inf - 4) * (rho_inf - 2) * rho_t))
      update = r_t * m_hat / (v_hat + epsilon)
    else:
      update = m_hat
    var = var - lr_t * (update + weight_decay * var)
    out.append(var.copy())
  return out


def lookahead_reference(var, grads, fast_step, sync_period=6, slow_step_size=0.5):
  """Lookahead by hand around ``fast_step(var, grad, t) -> var``."""
  var = np.array(var, np.float64)
  slow = var.copy()
  out = []
  for t, g in enumerate(grads, start=1):
    var = fast_step(var, g, t)
    if t % sync_period == 0:
      slow = slow + slow_step_size * (var - slow)
      var = slow.copy()
    out.append(var.copy())
  return out


def _run(optimizer, init, grads):
  var = tf.Variable(init, dtype=tf.float64)
  out = []
  for g in grads:
    optimizer.apply_gradients([(tf.constant(g), var)])
    out.append(var.numpy().copy())
  return out


@pytest.mark.parametrize("kwargs", [
    {},
    {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6},
    {"weight_decay": 0.1},
    {"amsgrad": True},
    {"sma_threshold": 8.0, "learning_rate": 0.05},
    {"total_steps": 10, "warmup_proportion": 0.3, "min_lr": 1e-4, "learning_rate": 0.02},
])
def test_radam_matches_hand_computed_updates(kwargs):
  init = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
  grads = _gradients((2, 3), STEPS)
  got = _run(optimizers.RAdam(**kwargs), init, grads)
  want = radam_reference(init, grads, **kwargs)
  for step, (a, b) in enumerate(zip(got, want), start=1):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"step {step}")
  # The updates really move the variable, and differ before/after rectification.
  assert not np.allclose(got[-1], init)


def test_radam_learning_rate_schedule_and_weight_decay_exclusion():
  schedule = keras.optimizers.schedules.PolynomialDecay(0.01, STEPS, 0.0, power=0.9)
  opt = optimizers.RAdam(schedule, weight_decay=0.5)
  decayed = tf.Variable(np.ones((2, 2)), dtype=tf.float64)
  excluded = tf.Variable(np.ones((2,)), dtype=tf.float64)
  opt.exclude_from_weight_decay(var_list=[excluded])
  opt.build([decayed, excluded])
  grads = _gradients((2, 2), STEPS, seed=1)
  for g in grads:
    opt.apply_gradients([(tf.constant(g), decayed), (tf.constant(g[0]), excluded)])
  # The reference, one step at a time with the schedule's rate at that step.
  var_d, var_e = np.ones((2, 2)), np.ones((2,))
  lrs = [float(schedule(t)) for t in range(STEPS)]  # float32, as the optimizer sees it
  m = np.zeros((2, 2)); v = np.zeros((2, 2))
  m_e = np.zeros(2); v_e = np.zeros(2)
  rho_inf = 2 / (1 - 0.999) - 1
  for t, g in enumerate(grads, start=1):
    for which in ("d", "e"):
      gg = g if which == "d" else g[0]
      mm, vv, var = (m, v, var_d) if which == "d" else (m_e, v_e, var_e)
      mm = 0.9 * mm + 0.1 * gg
      vv = 0.999 * vv + 0.001 * gg * gg
      m_hat = mm / (1 - 0.9 ** t)
      v_hat = np.sqrt(vv / (1 - 0.999 ** t))
      rho_t = rho_inf - 2 * t * 0.999 ** t / (1 - 0.999 ** t)
      if rho_t >= 5:
        r_t = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf /
                      ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        u = r_t * m_hat / (v_hat + 1e-7)
      else:
        u = m_hat
      if which == "d":
        var = var - lrs[t - 1] * (u + 0.5 * var)
        m, v, var_d = mm, vv, var
      else:
        var = var - lrs[t - 1] * u
        m_e, v_e, var_e = mm, vv, var
  np.testing.assert_allclose(decayed.numpy(), var_d, rtol=1e-10)
  np.testing.assert_allclose(excluded.numpy(), var_e, rtol=1e-10)


@pytest.mark.parametrize("sync_period,slow_step_size", [(6, 0.5), (3, 0.8), (1, 0.3)])
def test_lookahead_around_sgd_matches_hand_computed_updates(sync_period, slow_step_size):
  init = np.array([0.5, -1.5, 2.0])
  grads = _gradients((3,), 13, seed=2)
  opt = optimizers.Lookahead(keras.optimizers.SGD(0.1), sync_period=sync_period,
                             slow_step_size=slow_step_size)
  got = _run(opt, init, grads)
  lr = float(np.float32(0.1))
  want = lookahead_reference(init, grads, lambda w, g, t: w - lr * g, sync_period,
                             slow_step_size)
  for step, (a, b) in enumerate(zip(got, want), start=1):
    np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=f"step {step}")
  assert int(opt.iterations.numpy()) == 13


def test_lookahead_around_radam_matches_hand_computed_updates():
  init = np.linspace(-1.0, 1.0, 4)
  grads = _gradients((4,), 14, seed=3)
  opt = optimizers.Lookahead(optimizers.RAdam(learning_rate=0.05), sync_period=5,
                             slow_step_size=0.5)
  got = _run(opt, init, grads)
  # The fast RAdam keeps its moments across synchronisations: replay it by hand.
  state = {"m": np.zeros(4), "v": np.zeros(4)}
  lr = float(np.float32(0.05))
  rho_inf = 2 / (1 - 0.999) - 1

  def radam_step(w, g, t):
    state["m"] = 0.9 * state["m"] + 0.1 * g
    state["v"] = 0.999 * state["v"] + 0.001 * g * g
    m_hat = state["m"] / (1 - 0.9 ** t)
    v_hat = np.sqrt(state["v"] / (1 - 0.999 ** t))
    rho_t = rho_inf - 2 * t * 0.999 ** t / (1 - 0.999 ** t)
    if rho_t < 5:
      return w - lr * m_hat
    r_t = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return w - lr * r_t * m_hat / (v_hat + 1e-7)

  want = lookahead_reference(init, grads, radam_step, sync_period=5, slow_step_size=0.5)
  for step, (a, b) in enumerate(zip(got, want), start=1):
    np.testing.assert_allclose(a, b, rtol=1e-10, err_msg=f"step {step}")


def test_lookahead_checkpoint_resume_is_exact(tmp_path):
  init = np.array([1.0, -2.0])
  grads = _gradients((2,), 10, seed=4)

  def make():
    var = tf.Variable(init, dtype=tf.float64)
    opt = optimizers.Lookahead(optimizers.RAdam(0.1), sync_period=4)
    opt.build([var])
    return var, opt

  var, opt = make()
  for g in grads:
    opt.apply_gradients([(tf.constant(g), var)])
  straight = var.numpy()

  var, opt = make()
  for g in grads[:5]:
    opt.apply_gradients([(tf.constant(g), var)])
  path = tf.train.Checkpoint(var=var, opt=opt).save(str(tmp_path / "ckpt"))
  var, opt = make()
  tf.train.Checkpoint(var=var, opt=opt).restore(path).assert_consumed()
  assert int(opt.iterations.numpy()) == 5
  for g in grads[5:]:
    opt.apply_gradients([(tf.constant(g), var)])
  np.testing.assert_array_equal(var.numpy(), straight)


def test_make_optimizer_from_gin():
  gin.clear_config()
  try:
    gin.parse_config("""
        make_optimizer.name = 'radam'
        make_optimizer.weight_decay = 1e-4
        make_optimizer.lookahead = True
        make_optimizer.lookahead_sync_period = 5
        make_optimizer.lookahead_slow_step_size = 0.4
    """)
    opt = optimizers.make_optimizer(1e-3)
  finally:
    gin.clear_config()
  assert isinstance(opt, optimizers.Lookahead)
  assert (opt.sync_period, opt.slow_step_size) == (5, 0.4)
  assert isinstance(opt.inner_optimizer, optimizers.RAdam)
  assert opt.inner_optimizer.decoupled_weight_decay == 1e-4
  # Backward compatible default: AdamW, no wrapper.
  assert isinstance(optimizers.make_optimizer(1e-3), keras.optimizers.AdamW)
  with pytest.raises(ValueError, match="make_optimizer.name='radamw'"):
    optimizers.make_optimizer(1e-3, name="radamw")


def test_optimizer_group_with_radam_lookahead():
  gin.clear_config()
  try:
    gin.parse_config("""
        learning_rate_schedule.total_steps = 10
        learning_rate_schedule.schedule = 'constant'
        make_optimizer.name = 'radam'
        make_optimizer.weight_decay = 1e-2
        make_optimizer.lookahead = True
    """)
    backbone = [tf.Variable(tf.ones([2, 2]))]
    other = [tf.Variable(tf.ones([3, 2])), tf.Variable(tf.ones([2]))]
    group = optimizers.OptimizerGroup(backbone, other, backbone_learning_rate_multiplier=0.1)
  finally:
    gin.clear_config()
  variables = backbone + other
  for _ in range(3):
    group.apply_gradients([(tf.ones_like(v), v) for v in variables])
  assert int(group.iterations.numpy()) == 3
  # The backbone moved about 10x less than the head weights of the same shape class.
  moved_backbone = 1.0 - float(backbone[0].numpy()[0, 0])
  moved_other = 1.0 - float(other[0].numpy()[0, 0])
  assert moved_other == pytest.approx(10 * moved_backbone, rel=1e-2)
  # Rank-1 variables are excluded from weight decay (through the wrapper).
  assert not group.main.inner_optimizer._use_weight_decay(other[1])
  assert group.main.inner_optimizer._use_weight_decay(other[0])


def _sgd_group(**kwargs):
  gin.clear_config()
  try:
    gin.parse_config("""
        learning_rate_schedule.total_steps = 10
        learning_rate_schedule.schedule = 'constant'
        learning_rate_schedule.base_learning_rate = 1.0
        make_optimizer.name = 'sgd'
        make_optimizer.momentum = 0.0
    """)
    backbone = [tf.Variable([0.0, 0.0])]
    other = [tf.Variable([[0.0], [0.0]])]
    group = optimizers.OptimizerGroup(backbone, other, backbone_learning_rate_multiplier=1.0,
                                      **kwargs)
  finally:
    gin.clear_config()
  return group, backbone + other


@pytest.mark.parametrize("jit_compile", [False, True])
def test_global_clipnorm_clips_the_whole_model_gradient(jit_compile):
  # Backbone gradient (3, 0), head gradient (0, 4): the whole gradient's norm is 5,
  # so with max norm 1 both parts scale by 1/5 (per-group clipping would give
  # (1, 0) and (0, 1)). SGD at rate 1 from zero: the weights are minus the update.
  group, variables = _sgd_group(global_clipnorm=1.0)
  grads = [tf.constant([3.0, 0.0]), tf.constant([[0.0], [4.0]])]
  tf.function(lambda: group.apply_gradients(zip(grads, variables)),
              jit_compile=jit_compile)()
  np.testing.assert_allclose(variables[0].numpy(), [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(variables[1].numpy(), [[0.0], [-0.8]], rtol=1e-6)
  # Below the threshold nothing changes: norm 0.5 < 1.
  group, variables = _sgd_group(global_clipnorm=1.0)
  group.apply_gradients(zip([g / 10 for g in grads], variables))
  np.testing.assert_allclose(variables[0].numpy(), [-0.3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(variables[1].numpy(), [[0.0], [-0.4]], rtol=1e-6)


def test_global_clipnorm_rejects_a_non_positive_value():
  with pytest.raises(ValueError, match="OptimizerGroup.global_clipnorm must be a positive"):
    _sgd_group(global_clipnorm=0.0)


class _Part(keras.layers.Layer):
  """A part whose constructor creates a weight: its variable.name is bare."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.level_embed = self.add_weight("level_embed", shape=[2, 3], trainable=True,
                                       initializer="ones")
    self.dense = keras.layers.Dense(3, kernel_initializer="ones", bias_initializer="ones")

  def call(self, x):
    return self.dense(x) + tf.reduce_sum(self.level_embed)


class _TwoParts(keras.Model):

  def __init__(self):
    super().__init__()
    self.pixel_encoder = _Part()
    self.transformer_decoder = _Part()
    self.norm = keras.layers.LayerNormalization(gamma_initializer="ones",
                                                beta_initializer="ones")

  def call(self, x):
    return self.norm(self.transformer_decoder(self.pixel_encoder(x)))


def _adamw_group(model, **kwargs):
  gin.clear_config()
  try:
    gin.parse_config("""
        learning_rate_schedule.total_steps = 10
        learning_rate_schedule.schedule = 'constant'
        learning_rate_schedule.base_learning_rate = 0.5
        make_optimizer.name = 'adamw'
        make_optimizer.weight_decay = 0.2
    """)
    backbone = model.pixel_encoder.trainable_variables
    others = model.transformer_decoder.trainable_variables + model.norm.trainable_variables
    return optimizers.OptimizerGroup(backbone, others, backbone_learning_rate_multiplier=1.0,
                                     variable_paths=optimizers.variable_paths(model),
                                     **kwargs)
  finally:
    gin.clear_config()


@pytest.mark.parametrize("decay_low_rank", [False, True])
def test_no_weight_decay_patterns_follow_attribute_paths(decay_low_rank):
  model = _TwoParts()
  model(tf.zeros([1, 3]))
  # Both parts' embeddings are called "level_embed:0"; their paths differ.
  assert model.pixel_encoder.level_embed.name == model.transformer_decoder.level_embed.name
  paths = optimizers.variable_paths(model)
  assert paths[id(model.transformer_decoder.level_embed)] == ["transformer_decoder/level_embed"]
  group = _adamw_group(model, no_weight_decay_patterns=(
      "^transformer_decoder/level_embed$", "^norm/gamma$"),
                       decay_low_rank_variables=decay_low_rank)
  variables = model.trainable_variables
  # A zero gradient leaves only AdamW's decoupled decay: w <- w - lr * wd * w
  # (Adam's step is 0 / (0 + eps) = 0), w = 1 everywhere, lr 0.5, wd 0.2: 0.9.
  group.apply_gradients([(tf.zeros_like(v), v) for v in variables])
  spared = {id(model.transformer_decoder.level_embed), id(model.norm.gamma)}
  if not decay_low_rank:  # every bias and the norm's beta too
    spared |= {id(v) for v in variables if v.shape.rank < 2}
  for v in variables:
    expected = 1.0 if id(v) in spared else 0.9
    np.testing.assert_allclose(v.numpy(), np.full(v.shape, expected), rtol=1e-6,
                               err_msg=paths[id(v)][0])
  assert model.pixel_encoder.level_embed.numpy()[0, 0] == pytest.approx(0.9)
  assert model.transformer_decoder.dense.bias.numpy()[0] == pytest.approx(
      1.0 if not decay_low_rank else 0.9)


def test_backbone_no_weight_decay_patterns_and_their_errors():
  model = _TwoParts()
  model(tf.zeros([1, 3]))
  group = _adamw_group(model, backbone_no_weight_decay_patterns=("level_embed$",),
                       decay_low_rank_variables=True)
  variables = model.trainable_variables
  group.apply_gradients([(tf.zeros_like(v), v) for v in variables])
  assert model.pixel_encoder.level_embed.numpy()[0, 0] == pytest.approx(1.0)
  assert model.transformer_decoder.level_embed.numpy()[0, 0] == pytest.approx(0.9)
  # A pattern that names nothing in its group (here: a decoder weight given as a
  # backbone pattern) or is not a regular expression is one clear error.
  with pytest.raises(ValueError, match=r"OptimizerGroup.backbone_no_weight_decay_patterns: "
                                       r"'\^transformer_decoder/' matches no variable"):
    _adamw_group(model, backbone_no_weight_decay_patterns=("^transformer_decoder/",))
  with pytest.raises(ValueError, match=r"OptimizerGroup.no_weight_decay_patterns: '\(' is "
                                       "not a regular expression"):
    _adamw_group(model, no_weight_decay_patterns=("(",))
