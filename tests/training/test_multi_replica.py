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
