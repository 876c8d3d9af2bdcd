"""Runs that survive: checkpoint on SIGTERM, exact resume after SIGKILL.

The quickstart model (shrunk: 64x64 crops, batch 2, 6 steps) trains through
``main.py`` in subprocesses: once uninterrupted, and once SIGTERMed, restarted,
SIGKILLed, restarted; the final checkpoints must agree. Slow (four TensorFlow
start-ups, about 2 minutes on 2 idle cores); runs in CI all the same.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT, run_main

QUICKSTART = "experiments/quickstart/kmax_deeplab_shapes.gin"
STEPS = 6


def _params(data):
  return [
      f"--gin_file={QUICKSTART}",
      f"--gin_param=TRAIN_STEPS={STEPS}",
      "--gin_param=ExperimentConfig.steps_per_loop=1",
      "--gin_param=ExperimentConfig.checkpoint_interval=2",
      "--gin_param=ExperimentConfig.train_batch_size=2",
      "--gin_param=ExperimentConfig.checkpoint_data_iterator=True",
      "--gin_param=ExperimentConfig.deterministic_ops=True",
      "--gin_param=ExperimentConfig.seed=1",
      "--gin_param=train/PipelineConfig.shuffle_buffer=8",
      f"--gin_param=DATA_DIR='{data}'",
      f"--gin_param=ExperimentConfig.train_file_pattern='{data}/train-*'",
      f"--gin_param=ExperimentConfig.eval_file_pattern='{data}/val-*'",
      "--gin_param=ensure_shapes_dataset.num_train=16",
      "--gin_param=ensure_shapes_dataset.num_val=4",
      "--gin_param=ensure_shapes_dataset.num_shards=2",
      "--gin_param=learning_rate_schedule.warmup_steps=2",
  ]


def _popen(params, model_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, "main.py"), *params, "--mode=train",
       f"--model_dir={model_dir}"],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(proc, model_dir, newer_than=0, timeout=400):
  """Waits until the checkpoint state file names a checkpoint after step
  ``newer_than``; returns its step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be interrupted"
    latest = tf.train.latest_checkpoint(str(model_dir))
    if latest and int(latest.rsplit("-", 1)[1]) > newer_than:
      return int(latest.rsplit("-", 1)[1])
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def _model_and_optimizer_values(model_dir):
  path = tf.train.latest_checkpoint(str(model_dir))
  assert path.endswith(f"ckpt-{STEPS}"), path
  reader = tf.train.load_checkpoint(path)
  names = [n for n in reader.get_variable_to_shape_map()
           if n.startswith(("model/", "optimizer/", "backbone_optimizer/"))
           and "OBJECT_GRAPH" not in n]
  return {n: reader.get_tensor(n) for n in names}


def _assert_same_run(model_dir, reference):
  got = _model_and_optimizer_values(model_dir)
  assert set(got) == set(reference)
  assert len(got) > 50  # model weights, BN statistics and optimizer slots
  for name, value in reference.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("resume")
  params = _params(root / "data")
  proc = run_main(*params, "--mode=train", f"--model_dir={root / 'straight'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  _check_train_summaries(root / "straight" / "train")
  return root, params, _model_and_optimizer_values(root / "straight")


def _check_train_summaries(train_dir):
  """TensorBoard: losses, gradient norm, step time, images/s and the gin config."""
  tags, config = set(), ""
  for name in os.listdir(train_dir):
    for event in tf.compat.v1.train.summary_iterator(str(train_dir / name)):
      for value in event.summary.value:
        tags.add(value.tag)
        if value.tag == "operative_config":
          config = tf.make_ndarray(value.tensor).item().decode()
  for tag in ("losses/total_loss", "gradient_norm", "step_time_seconds",
              "images_per_second", "learning_rate", "operative_config"):
    assert tag in tags, sorted(tags)
  assert "make_optimizer.name = 'adamw'" in config


@pytest.mark.slow
def test_sigterm_then_sigkill_then_restart_ends_with_the_uninterrupted_weights(straight_run):
  root, params, reference = straight_run
  model_dir = root / "interrupted"

  # 1. SIGTERM once the first checkpoint exists: checkpoint at the named step, exit 143.
  proc = _popen(params, model_dir)
  try:
    _wait_for_checkpoint(proc, model_dir)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 143, out[-3000:]
  line = [l for l in out.splitlines() if "SIGTERM received" in l]
  assert line, out[-3000:]
  step = int(line[0].split("stopping at step ")[1].split(";")[0])
  assert f"checkpoint saved to {model_dir}/ckpt-{step}" in line[0]
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{step}")
  assert step < STEPS - 2, "stopped too late to test the SIGKILL"

  # 2. Restart, SIGKILL as soon as it has written a newer checkpoint.
  proc = _popen(params, model_dir)
  try:
    killed_after = _wait_for_checkpoint(proc, model_dir, newer_than=step)
  finally:
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed.
    out, _ = proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert f"train | step {step + 1:>6d}/{STEPS}" in out  # resumed after the SIGTERM step
  assert killed_after < STEPS

  # 3. Restart to the end: the same weights, BN statistics and optimizer slots.
  again = run_main(*params, "--mode=train", f"--model_dir={model_dir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"train | step      1/{STEPS}" not in again.stdout, again.stdout[-2000:]
  assert f"train | step {STEPS:>6d}/{STEPS}" in again.stdout
  _assert_same_run(model_dir, reference)
