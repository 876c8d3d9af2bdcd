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


# Two workers run the whole experiment (train_and_eval) of a tiny kMaX.
_EXPERIMENT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {repo!r})
    from deeplab_panoptic import main as main_lib
    from deeplab_panoptic.training import experiment
    main_lib.parse_gin(["experiments/quickstart/kmax_deeplab_shapes.gin"], {params!r})
    exp = experiment.Experiment({model_dir!r}, "train_and_eval")
    print("WORKER " + json.dumps({{"pid": os.getpid(), "chief": exp.is_chief,
                                   "write_dir": exp.write_dir}}), flush=True)
    exp.run()
""")


def _worker_line(stdout):
  line = [l for l in stdout.splitlines() if l.startswith("WORKER ")][0]
  return json.loads(line[len("WORKER "):])


@pytest.mark.slow
def test_only_the_chief_writes_the_run_files(tmp_path):
  """train_and_eval on two workers: results.json, operative_config.gin, checkpoints
  and TensorBoard events come from the chief alone; the other worker's folder is
  removed at the end. Slow: two TensorFlow start-ups and model builds in parallel."""
  from deeplab_panoptic.data import convert  # pylint: disable=g-import-not-at-top
  data, model_dir = str(tmp_path / "data"), str(tmp_path / "run")
  convert.ensure_shapes_dataset(data, num_train=4, num_val=2, num_shards=2, num_workers=1)
  params = [
      "build_strategy.distribution_strategy='multi_worker_mirrored'",
      "ExperimentConfig.prepare_data=None", f"DATA_DIR='{data}'",
      "InputConfig.crop_size=(64, 64)", "InputConfig.max_original_size=(128, 128)",
      "TRAIN_STEPS=2", "ExperimentConfig.steps_per_loop=2",
      "ExperimentConfig.train_batch_size=2", "ExperimentConfig.eval_batch_size=2",
      "learning_rate_schedule.warmup_steps=0", "PanopticEvaluator.num_summary_images=0",
      # One k-means layer instead of three: less to trace on each worker.
      "KMaXTransformerDecoder.strides=(8,)", "KMaXTransformerDecoder.num_blocks=(1,)",
  ]
  script = _EXPERIMENT_SCRIPT.format(repo=REPO_ROOT, params=params, model_dir=model_dir)
  cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
  procs, logs = [], [str(tmp_path / f"worker{i}.log") for i in range(2)]
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               TF_CONFIG=json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": index}}))
    with open(logs[index], "w", encoding="utf-8") as log:
      procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, text=True))
  workers = []
  try:
    for proc, log in zip(procs, logs):
      # Generous: on 2 shared cores at load 8-10 a niced worker gets little CPU.
      proc.wait(timeout=1800)
      out = open(log, encoding="utf-8").read()
      assert proc.returncode == 0, out[-3000:]
      workers.append((_worker_line(out), out))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  (chief, chief_out), (other, other_out) = workers
  assert chief["chief"] and chief["write_dir"] == model_dir
  assert not other["chief"] and other["write_dir"] != model_dir
  assert not os.path.exists(other["write_dir"])  # Removed at the end.
  assert "2 replica(s) in sync" in chief_out and "2 replica(s) in sync" in other_out
  assert f"writes to {other['write_dir']}, removed at the end" in other_out
  results = json.load(open(os.path.join(model_dir, "eval", "results.json")))
  assert results["step"] == 2
  assert os.path.isfile(os.path.join(model_dir, "operative_config.gin"))
  assert tf_latest_checkpoint_step(model_dir) == 2
  # TensorBoard names each events file after the process that wrote it.
  events = [f for _, _, files in os.walk(model_dir) for f in files if "tfevents" in f]
  assert events and all(f".{chief['pid']}." in f for f in events), events


def tf_latest_checkpoint_step(model_dir):
  """The step of the newest checkpoint named in ``model_dir/checkpoint`` (no TensorFlow)."""
  with open(os.path.join(model_dir, "checkpoint"), encoding="utf-8") as f:
    first = f.readline()  # model_checkpoint_path: "ckpt-2"
  return int(first.strip().rstrip('"').rsplit("-", 1)[-1])
