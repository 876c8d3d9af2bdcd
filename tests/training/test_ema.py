"""The optimizers' EMA of the weights: values, swapping, checkpoints, replicas.

The averages are checked against the EMA recurrence computed in numpy from the
SGD updates; the swap against the values seen inside and after it; the
checkpoint entry against a restore into fresh variables. The end-to-end use in
evaluation and export is tests/training/test_ema_end_to_end.py.
"""

import subprocess
import sys
import textwrap

import gin
import numpy as np
import orbit
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.postprocess.semantic import SemanticPostprocessor
from deeplab_panoptic.training import ema as ema_lib
from deeplab_panoptic.training import evaluator as evaluator_lib
from deeplab_panoptic.training import optimizers
from tests.conftest import REPO_ROOT

MOMENTUM = 0.5
LEARNING_RATE = 0.1
BACKBONE_MULTIPLIER = 0.1


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _ema_bindings(use_ema=True):
  gin.parse_config(f"""
      learning_rate_schedule.total_steps = 10
      learning_rate_schedule.schedule = 'constant'
      learning_rate_schedule.base_learning_rate = {LEARNING_RATE}
      make_optimizer.name = 'sgd'
      make_optimizer.momentum = 0.0
      make_optimizer.use_ema = {use_ema}
      make_optimizer.ema_momentum = {MOMENTUM}
      """)


def _model_and_group():
  """Two dense layers: the first is the 'backbone' (its own optimizer, lr x 0.1)."""
  keras.utils.set_random_seed(1)
  model = keras.Sequential([keras.layers.Dense(3), keras.layers.Dense(2)])
  model(tf.zeros([1, 4]))
  backbone = model.layers[0].trainable_variables
  others = model.layers[1].trainable_variables
  group = optimizers.OptimizerGroup(backbone, others,
                                    backbone_learning_rate_multiplier=BACKBONE_MULTIPLIER)
  return model, group, len(backbone)


def _train(model, group, steps):
  """SGD steps with fixed pseudo-random gradients; returns the numpy EMA of the weights."""
  rng = np.random.default_rng(0)
  variables = model.trainable_variables
  weights = [v.numpy() for v in variables]
  averages = [w.copy() for w in weights]   # tf_keras starts the average at the weight
  n_backbone = len(model.layers[0].trainable_variables)
  for _ in range(steps):
    grads = [rng.normal(size=w.shape).astype(np.float32) for w in weights]
    group.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    for i, g in enumerate(grads):
      lr = LEARNING_RATE * (BACKBONE_MULTIPLIER if i < n_backbone else 1.0)
      weights[i] = weights[i] - lr * g
      averages[i] = MOMENTUM * averages[i] + (1 - MOMENTUM) * weights[i]
  for v, w in zip(variables, weights):
    np.testing.assert_allclose(v.numpy(), w, rtol=1e-6, atol=1e-6)
  return weights, averages


def test_averages_follow_the_ema_recurrence_and_differ_from_the_weights(clean_gin):
  _ema_bindings()
  model, group, _ = _model_and_group()
  weights, expected = _train(model, group, steps=3)
  averages = group.moving_averages(model.trainable_variables)
  assert len(averages) == len(weights)
  for average, want, weight in zip(averages, expected, weights):
    np.testing.assert_allclose(average.numpy(), want, rtol=1e-5, atol=1e-6)
    assert np.abs(average.numpy() - weight).max() > 1e-3


def test_no_averages_without_ema(clean_gin):
  _ema_bindings(use_ema=False)
  model, group, _ = _model_and_group()
  assert group.moving_averages(model.trainable_variables) is None
  assert not optimizers.ema_enabled()


def test_swapped_puts_the_averages_in_and_the_weights_back_even_on_error(clean_gin):
  _ema_bindings()
  model, group, _ = _model_and_group()
  weights, averages = _train(model, group, steps=3)
  ema = ema_lib.EmaWeights(model.trainable_variables,
                           group.moving_averages(model.trainable_variables))
  x = np.random.default_rng(2).normal(size=[5, 4]).astype(np.float32)

  def numpy_forward(w):   # Dense -> Dense, no activation
    return (x @ w[0] + w[1]) @ w[2] + w[3]

  with ema.swapped():
    np.testing.assert_allclose(model(x).numpy(), numpy_forward(averages), rtol=1e-5,
                               atol=1e-5)
  np.testing.assert_allclose(model(x).numpy(), numpy_forward(weights), rtol=1e-5, atol=1e-5)
  with pytest.raises(RuntimeError):
    with ema.swapped():
      raise RuntimeError("evaluation failed")
  for v, w in zip(model.trainable_variables, weights):
    np.testing.assert_allclose(v.numpy(), w, rtol=1e-6, atol=1e-6)
  for a, want in zip(ema.averages, averages):
    np.testing.assert_allclose(a.numpy(), want, rtol=1e-5, atol=1e-6)


def test_checkpoint_entry_restores_into_fresh_averages(clean_gin, tmp_path):
  _ema_bindings()
  model, group, _ = _model_and_group()
  ema = ema_lib.EmaWeights(model.trainable_variables,
                           group.moving_averages(model.trainable_variables))
  assert ema.start_from_weights()          # a fresh run: the averages start at the weights
  _, averages = _train(model, group, steps=2)
  assert not ema.start_from_weights()      # ready: a resumed run keeps its averages
  path = tf.train.Checkpoint(model=model, **group.checkpoint_items(),
                             **{ema_lib.CHECKPOINT_KEY: ema}).save(str(tmp_path / "ckpt"))

  fresh = ema_lib.EmaWeights.for_restore(model.trainable_variables)
  with pytest.raises(ema_lib.EmaError, match="make_optimizer.use_ema"):
    fresh.check_ready("eval")
  tf.train.Checkpoint(**{ema_lib.CHECKPOINT_KEY: fresh}).read(path).expect_partial()
  fresh.check_ready("eval")
  for a, want in zip(fresh.averages, averages):
    np.testing.assert_allclose(a.numpy(), want, rtol=1e-5, atol=1e-6)

  # A checkpoint written without EMA leaves the averages unready: an error, not zeros.
  plain = tf.train.Checkpoint(model=model).save(str(tmp_path / "plain"))
  empty = ema_lib.EmaWeights.for_restore(model.trainable_variables)
  tf.train.Checkpoint(**{ema_lib.CHECKPOINT_KEY: empty}).read(plain).expect_partial()
  with pytest.raises(ema_lib.EmaError, match="holds no EMA"):
    empty.check_ready("eval")


def test_evaluator_evaluates_the_averages_and_restores_the_weights(clean_gin, tmp_path,
                                                                    monkeypatch):
  _ema_bindings()
  model, group, _ = _model_and_group()
  weights, averages = _train(model, group, steps=3)
  ema = ema_lib.EmaWeights(model.trainable_variables,
                           group.moving_averages(model.trainable_variables))
  ema.ready.assign(1)   # the averages follow this run (trained above)
  seen = []

  def fake_evaluate(self, num_steps):  # what orbit's loop would run the model with
    seen.append([v.numpy() for v in self.model.trainable_variables])
    if len(seen) == 2:
      raise tf.errors.ResourceExhaustedError(None, None, "out of memory")
    return {"PQ": 1.0}

  monkeypatch.setattr(orbit.StandardEvaluator, "evaluate", fake_evaluate)
  info = dataset_info_lib.dataset_info(name="shapes")
  evaluator = evaluator_lib.PanopticEvaluator(
      tf.distribute.get_strategy(), model=model,
      postprocessor=SemanticPostprocessor(is_thing=info.is_thing,
                                          label_divisor=info.label_divisor,
                                          ignore_label=info.ignore_label),
      eval_dataset=tf.data.Dataset.range(1), dataset_info=info, model_dir=str(tmp_path),
      global_step=tf.Variable(3, dtype=tf.int64), ema=ema)
  assert evaluator.evaluate(tf.constant(-1)) == {"PQ": 1.0}
  with pytest.raises(tf.errors.ResourceExhaustedError):
    evaluator.evaluate(tf.constant(-1))
  for inside in seen:
    for v, want in zip(inside, averages):
      np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-6)
  for v, w in zip(model.trainable_variables, weights):
    np.testing.assert_allclose(v.numpy(), w, rtol=1e-6, atol=1e-6)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import gin, numpy as np, tensorflow as tf, tf_keras as keras
    sys.path.insert(0, {repo!r})
    from deeplab_panoptic.training import ema as ema_lib, optimizers, strategies

    gin.parse_config("build_strategy.num_cpu_devices = 2\\n"
                     "learning_rate_schedule.total_steps = 10\\n"
                     "learning_rate_schedule.schedule = 'constant'\\n"
                     "make_optimizer.name = 'sgd'\\n"
                     "make_optimizer.use_ema = True\\n"
                     "make_optimizer.ema_momentum = 0.5")
    strategy = strategies.build_strategy(distribution_strategy="mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
      model = keras.Sequential([keras.layers.Dense(2)])
      model(tf.zeros([1, 3]))
      group = optimizers.OptimizerGroup([], model.trainable_variables)
      ema = ema_lib.EmaWeights(model.trainable_variables,
                               group.moving_averages(model.trainable_variables))
    ema.start_from_weights()

    @tf.function
    def step():
      def fn():
        grads = [tf.ones_like(v) for v in model.trainable_variables]
        group.apply_gradients(zip(grads, model.trainable_variables))
      strategy.run(fn)

    for _ in range(2):
      step()
    def copies(v):
      return [c.numpy() for c in strategy.experimental_local_results(v)]
    weights = [copies(v) for v in model.trainable_variables]
    averages = [copies(a) for a in ema.averages]
    with ema.swapped():
      inside = [copies(v) for v in model.trainable_variables]
    after = [copies(v) for v in model.trainable_variables]
    for per_var_avg, per_var_in in zip(averages, inside):
      for replica in range(2):   # every replica's copy holds the average
        np.testing.assert_array_equal(per_var_in[replica], per_var_avg[0])
    for w, a in zip(weights, after):
      for replica in range(2):
        np.testing.assert_array_equal(a[replica], w[0])
    assert not np.allclose(weights[0][0], averages[0][0])
    print("ok")
""")


def test_swap_writes_every_replica_under_a_mirrored_strategy():
  proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT.format(repo=REPO_ROOT)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
