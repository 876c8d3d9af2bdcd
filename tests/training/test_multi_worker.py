"""Two MultiWorkerMirroredStrategy workers over loopback train like one process.

Two subprocesses get a TF_CONFIG naming two localhost ports; each builds the
strategy from ``build_strategy(distribution_strategy="multi_worker_mirrored")``,
a tiny conv + synchronized batch norm (``conv.batch_norm``) + dense model, and
runs three steps of the PanopticTrainer on its half of a global batch of 4. Both
workers must end with identical weights, equal to those of a default-strategy
process (started alongside) trained on the whole batches. Then a float16 model
with the dynamic loss scale takes a finite step (equal on both workers and to
the one-process run) and a step whose scaled gradient overflows on one worker
only: both workers (and the one-process run) skip it. Marked slow: three
TensorFlow start-ups and a gRPC cluster: 80 s on the 2 shared cores at load
average 6-8 (other engineers' jobs running).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

STEPS = 3

_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import gin, numpy as np, tensorflow as tf, tf_keras as keras
    from deeplab_panoptic import common
    from deeplab_panoptic.modeling.layers import conv
    from deeplab_panoptic.training import optimizers, strategies
    from deeplab_panoptic.training import trainer as trainer_lib

    gin.parse_config("learning_rate_schedule.total_steps = 10\\n"
                     "learning_rate_schedule.schedule = 'constant'\\n"
                     "learning_rate_schedule.base_learning_rate = 0.05\\n"
                     "make_optimizer.name = 'adam'")
    strategy = {strategy}
    rng = np.random.default_rng(0)
    images = rng.normal(size=[{steps} * 4, 6, 6, 3]).astype(np.float32)
    targets = rng.normal(size=[{steps} * 4, 2]).astype(np.float32)

    def loss_fn(batch, outputs):
      return {{common.LOSS_TOTAL: tf.reduce_mean(tf.square(outputs - batch["target"]))}}

    with strategy.scope():
      keras.utils.set_random_seed(0)
      model = keras.Sequential([
          keras.layers.Conv2D(4, 3, use_bias=False),
          conv.batch_norm(momentum=0.5, synchronized=True),
          keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
      model(tf.zeros([1, 6, 6, 3]))
      initial = [v.numpy().tolist() for v in model.weights]
      group = optimizers.OptimizerGroup(model.layers[0].trainable_variables,
                                        [v for l in model.layers[1:] for v in l.trainable_variables],
                                        backbone_learning_rate_multiplier=0.5)
    dataset = tf.data.Dataset.from_tensor_slices({{common.IMAGE: images, "target": targets}}).batch(4)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    trainer = trainer_lib.PanopticTrainer(
        strategy, model, loss_fn, group,
        strategy.experimental_distribute_dataset(dataset.with_options(options)),
        global_batch_size=4, total_steps={steps})
    trainer.train(tf.constant({steps}))
    result = {{"replicas": strategy.num_replicas_in_sync, "initial": initial,
              "weights": [v.numpy().tolist() for v in model.weights]}}

    # float16 + loss scale: a finite step, then one whose scaled gradient
    # overflows on one worker only; both must skip it.
    keras.mixed_precision.set_global_policy("mixed_float16")
    with strategy.scope():
      keras.utils.set_random_seed(1)
      small = keras.Sequential([keras.layers.Dense(3, use_bias=False), keras.layers.Dense(1)])
      small(tf.zeros([1, 4]))
      scale = optimizers.DynamicLossScale(initial_scale=2.0 ** 15, growth_steps=100)
      group16 = optimizers.OptimizerGroup(small.layers[0].trainable_variables,
                                          small.layers[1].trainable_variables,
                                          backbone_learning_rate_multiplier=1.0,
                                          loss_scale=scale)
    x16 = rng.normal(size=[8, 4]).astype(np.float32)
    t16 = np.zeros([8, 1], np.float32)
    t16[5] = 300.0  # Step 2; with element-wise sharding only worker 1 holds it.
    ds16 = tf.data.Dataset.from_tensor_slices({{common.IMAGE: x16, "target": t16}}).batch(4)
    trainer16 = trainer_lib.PanopticTrainer(
        strategy, small, loss_fn, group16,
        strategy.experimental_distribute_dataset(ds16.with_options(options)),
        global_batch_size=4, total_steps=2)
    trainer16.train(tf.constant(1))
    result["fp16_after_one"] = [v.numpy().tolist() for v in small.weights]
    trainer16.train(tf.constant(1))
    result["fp16_after_two"] = [v.numpy().tolist() for v in small.weights]
    result["fp16_scale"] = float(scale())
    print("RESULT " + json.dumps(result))
""")


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _result(stdout):
  line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][0]
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_two_workers_over_loopback_end_with_identical_weights():
  ports = _free_ports(2)
  cluster = {"worker": [f"localhost:{p}" for p in ports]}
  script = _SCRIPT.format(
      repo=REPO_ROOT, steps=STEPS,
      strategy="strategies.build_strategy(distribution_strategy='multi_worker_mirrored')")
  procs = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               TF_CONFIG=json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": index}}))
    procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  # The reference, started alongside: one process, default strategy, whole batches.
  reference = _SCRIPT.format(repo=REPO_ROOT, steps=STEPS,
                             strategy="tf.distribute.get_strategy()")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  procs.append(subprocess.Popen([sys.executable, "-c", reference], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=300)
      assert proc.returncode == 0, err[-3000:]
      outputs.append(_result(out))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  first, second, one = outputs
  assert first["replicas"] == second["replicas"] == 2 and one["replicas"] == 1
  for a, b in zip(first["weights"], second["weights"]):
    np.testing.assert_array_equal(np.array(a), np.array(b))
  for a, b, start in zip(first["weights"], one["weights"], one["initial"]):
    assert not np.allclose(np.array(b), np.array(start))  # It trained.
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5)
  # float16: the finite step agrees with the one-process run, the overflowing
  # one is skipped by both workers (an overflow on one worker skips everywhere).
  for a, b, c in zip(first["fp16_after_one"], second["fp16_after_one"], one["fp16_after_one"]):
    np.testing.assert_array_equal(np.array(a), np.array(b))
    np.testing.assert_allclose(np.array(a), np.array(c), rtol=1e-3, atol=1e-4)
  for result in (first, second, one):
    for a, b in zip(result["fp16_after_two"], result["fp16_after_one"]):
      np.testing.assert_array_equal(np.array(a), np.array(b))
    assert result["fp16_scale"] == 2.0 ** 14
