"""Four replicas (logical CPU devices, MirroredStrategy) train like one.

A tiny conv + synchronized batch norm + dense model, the same global batch of 8,
the same initial weights: the loss trajectory and the final weights of 4
replicas (2 images each) equal those of the default strategy (8 images). The
split needs a fresh TensorFlow runtime, so the comparison runs in a subprocess.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

_SCRIPT = textwrap.dedent("""
    import json, sys
    import gin, numpy as np, tensorflow as tf, tf_keras as keras
    sys.path.insert(0, {repo!r})
    from deeplab_panoptic import common
    from deeplab_panoptic.training import optimizers, strategies
    from deeplab_panoptic.training import trainer as trainer_lib

    gin.parse_config("build_strategy.num_cpu_devices = 4\\n"
                     "learning_rate_schedule.total_steps = 6\\n"
                     "learning_rate_schedule.schedule = 'poly'\\n"
                     "make_optimizer.name = {optimizer!r}\\n"
                     "make_optimizer.lookahead = {lookahead}")
    mirrored = strategies.build_strategy(distribution_strategy="mirrored")
    rng = np.random.default_rng(0)
    images = rng.normal(size=[6, 8, 8, 8, 3]).astype(np.float32)
    targets = rng.normal(size=[6, 8, 2]).astype(np.float32)

    def loss_fn(batch, outputs):
      loss = tf.reduce_mean(tf.square(outputs - batch["target"]))
      return {{common.LOSS_TOTAL: loss}}

    def run(strategy):
      with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.layers.Conv2D(4, 3, use_bias=False),
            keras.layers.BatchNormalization(synchronized=True, momentum=0.5),
            keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2)])
        model(tf.zeros([1, 8, 8, 3]))
        initial = [v.numpy().tolist() for v in model.weights]
        group = optimizers.OptimizerGroup(model.layers[0].trainable_variables,
                                          [v for l in model.layers[1:] for v in l.trainable_variables],
                                          backbone_learning_rate_multiplier=0.1)
      ds = tf.data.Dataset.from_tensor_slices({{common.IMAGE: images.reshape(-1, 8, 8, 3),
                                               "target": targets.reshape(-1, 2)}}).batch(8)
      trainer = trainer_lib.PanopticTrainer(
          strategy, model, loss_fn, group, strategy.experimental_distribute_dataset(ds),
          global_batch_size=8, total_steps=6)
      losses = [float(trainer.train(tf.constant(1))["losses/total_loss"]) for _ in range(6)]
      return losses, [v.numpy().tolist() for v in model.weights], initial

    one = run(tf.distribute.get_strategy())
    four = run(mirrored)
    print("RESULT", json.dumps({{"replicas": mirrored.num_replicas_in_sync,
                                "one": one, "four": four}}))
""")


def _run(optimizer, lookahead):
  script = _SCRIPT.format(repo=REPO_ROOT, optimizer=optimizer, lookahead=lookahead)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0]
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_four_cpu_replicas_follow_the_one_replica_trajectory():
  result = _run("radam", True)
  assert result["replicas"] == 4
  (loss_1, weights_1, initial_1), (loss_4, weights_4, initial_4) = result["one"], result["four"]
  np.testing.assert_allclose(loss_4, loss_1, rtol=1e-5)
  for a, b in zip(initial_4, initial_1):
    np.testing.assert_array_equal(np.array(a), np.array(b))
  # It trained: every weight moved (moving statistics included).
  for a, b in zip(weights_1, initial_1):
    assert not np.allclose(np.array(a), np.array(b))
  # Kernels, BN scale/offset and moving statistics, dense weights.
  for a, b in zip(weights_4, weights_1):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)


_SYNC_BN_SCRIPT = textwrap.dedent("""
    import json, sys
    import gin, numpy as np, tensorflow as tf
    sys.path.insert(0, {repo!r})
    from deeplab_panoptic.modeling.layers import conv
    from deeplab_panoptic.training import strategies

    gin.parse_config("build_strategy.num_cpu_devices = 4\\n"
                     "batch_norm.momentum = 0.0\\nbatch_norm.epsilon = 1e-3")
    strategy = strategies.build_strategy(distribution_strategy="mirrored")
    # Replica r gets 2 images whose values are shifted by 10 r: per-replica and
    # global statistics differ a lot.
    rng = np.random.default_rng(0)
    data = (rng.normal(size=[4, 2, 3, 3, 5]) * 2 + 10 * np.arange(4)[:, None, None, None, None]
            ).astype(np.float32)
    result = {{}}
    for synchronized in (True, False):
      with gin.unlock_config():
        gin.bind_parameter("batch_norm.synchronized", synchronized)
      with strategy.scope():
        layer = conv.batch_norm()
        layer.build([None, 3, 3, 5])
      def step(ctx_data):
        return layer(ctx_data, training=True)
      values = strategy.experimental_distribute_values_from_function(
          lambda ctx: tf.constant(data[ctx.replica_id_in_sync_group]))
      out = strategy.experimental_local_results(strategy.run(step, args=(values,)))
      result[str(synchronized)] = {{
          "synchronized_attr": bool(layer.synchronized),
          "outputs": [o.numpy().tolist() for o in out],
          "moving_variance": layer.moving_variance.numpy().tolist()}}
    result["data"] = data.tolist()

    # float16 with the loss scale on 4 replicas (MirroredStrategy's merge_call
    # path): a finite step is applied, an overflowing one skipped everywhere.
    import tf_keras as keras
    from deeplab_panoptic import common
    from deeplab_panoptic.training import optimizers
    from deeplab_panoptic.training import trainer as trainer_lib
    gin.parse_config("learning_rate_schedule.total_steps = 10\\n"
                     "learning_rate_schedule.schedule = 'constant'\\n"
                     "learning_rate_schedule.base_learning_rate = 0.01\\n"
                     "make_optimizer.name = 'sgd'\\nmake_optimizer.momentum = 0.0")
    keras.mixed_precision.set_global_policy("mixed_float16")
    x = rng.normal(size=[2, 8, 4]).astype(np.float32)
    targets = np.zeros([2, 8, 1], np.float32)
    targets[1] = 300.0  # Its scaled gradient overflows float16.
    with strategy.scope():
      keras.utils.set_random_seed(0)
      model = keras.Sequential([keras.layers.Dense(3, use_bias=False), keras.layers.Dense(1)])
      model(tf.zeros([1, 4]))
      scale = optimizers.DynamicLossScale(initial_scale=2.0 ** 15, growth_steps=100)
      group = optimizers.OptimizerGroup(model.layers[0].trainable_variables,
                                        model.layers[1].trainable_variables,
                                        backbone_learning_rate_multiplier=1.0, loss_scale=scale)
    initial = [v.numpy() for v in model.trainable_variables]
    ds = tf.data.Dataset.from_tensor_slices({{common.IMAGE: x.reshape(-1, 4),
                                             "target": targets.reshape(-1, 1)}}).batch(8)
    trainer = trainer_lib.PanopticTrainer(
        strategy, model, lambda b, o: {{common.LOSS_TOTAL: tf.reduce_mean(tf.square(o - b["target"]))}},
        group, strategy.experimental_distribute_dataset(ds), global_batch_size=8, total_steps=2)
    trainer.train(tf.constant(1))
    after_one = [v.numpy() for v in model.trainable_variables]
    scale_one = float(scale())
    trainer.train(tf.constant(1))
    result["fp16"] = {{
        "x": x[0].tolist(), "initial": [w.tolist() for w in initial],
        "after_one": [w.tolist() for w in after_one],
        "after_two": [v.numpy().tolist() for v in model.trainable_variables],
        "scales": [scale_one, float(scale())], "iterations": int(group.iterations.numpy())}}
    print("RESULT", json.dumps(result))
""")


@pytest.mark.slow
def test_synchronized_batch_norm_and_float16_loss_scale_on_four_replicas():
  proc = subprocess.run([sys.executable, "-c", _SYNC_BN_SCRIPT.format(repo=REPO_ROOT)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0]
  result = json.loads(line[len("RESULT "):])
  data = np.array(result["data"])                       # [replica, 2, 3, 3, 5]
  flat = data.reshape(-1, 5)
  mean, var = flat.mean(0), flat.var(0)                 # global batch of 8
  expected = (data - mean) / np.sqrt(var + 1e-3)        # gamma 1, beta 0
  synced = result["True"]
  assert synced["synchronized_attr"]
  np.testing.assert_allclose(np.array(synced["outputs"]), expected, rtol=1e-4, atol=1e-4)
  # Momentum 0: the moving variance is the global batch's (population) variance.
  np.testing.assert_allclose(synced["moving_variance"], var, rtol=1e-4)
  # Without the option each replica normalises with its own 2 images.
  local = result["False"]
  assert not local["synchronized_attr"]
  per_replica = data.reshape(4, -1, 5)
  own = ((per_replica - per_replica.mean(1, keepdims=True))
         / np.sqrt(per_replica.var(1, keepdims=True) + 1e-3)).reshape(data.shape)
  np.testing.assert_allclose(np.array(local["outputs"]), own, rtol=1e-4, atol=1e-4)
  assert np.abs(own - expected).max() > 1.0

  # float16 + loss scale on 4 replicas: step 1 is plain SGD on the global batch
  # (numpy reference), step 2 overflows on every replica and is skipped.
  fp16 = result["fp16"]
  x = np.array(fp16["x"])                                # [8, 4]
  w1, w2, b2 = [np.array(w) for w in fp16["initial"]]   # [4, 3], [3, 1], [1]
  hidden = x @ w1
  residual = hidden @ w2 + b2                            # targets 0
  d_out = 2 * residual / len(x)
  expected = [w1 - 0.01 * x.T @ (d_out @ w2.T), w2 - 0.01 * hidden.T @ d_out,
              b2 - 0.01 * d_out.sum(0)]
  for got, want in zip(fp16["after_one"], expected):
    np.testing.assert_allclose(np.array(got), want, rtol=5e-3, atol=5e-3)
  for got, want in zip(fp16["after_two"], fp16["after_one"]):
    np.testing.assert_array_equal(np.array(got), np.array(want))
  assert fp16["scales"] == [2.0 ** 15, 2.0 ** 14] and fp16["iterations"] == 2
