"""--profile_steps=a,b: the flag's parsing, and the profiler's window over training steps.

The command line's one-line errors are in tests/test_main_errors.py.

The window is checked with the profiler's start and stop recorded against the
step counter (the real profiler writes its files in tests/test_end_to_end.py).
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.cli import profile_steps
from deeplab_panoptic.cli.errors import UsageError
from deeplab_panoptic.training import optimizers
from deeplab_panoptic.training import profiler as profiler_lib
from deeplab_panoptic.training import trainer as trainer_lib


@pytest.mark.parametrize("value, expected", [("2,3", (2, 3)), ("5, 5", (5, 5)),
                                             ("1,100", (1, 100))])
def test_parse_accepts_two_ordered_steps(value, expected):
  assert profile_steps.parse(value) == expected
  assert profile_steps.binding(value, "train") == f"ExperimentConfig.profile_steps={expected}"


@pytest.mark.parametrize("value", ["3", "3,2", "0,2", "a,b", "1,2,3", "-1,2", "", "2.5,3"])
def test_parse_rejects_malformed_values_in_one_line(value):
  with pytest.raises(UsageError, match=r"--profile_steps=.*expected two training steps"):
    profile_steps.parse(value)


def test_profiler_rejects_a_bad_window():
  with pytest.raises(ValueError, match="profile_steps"):
    profiler_lib.StepProfiler((3, 2), "/tmp/unused")


def test_trainer_profiles_exactly_the_window_across_loops(monkeypatch, tmp_path):
  gin.clear_config()
  gin.parse_config("learning_rate_schedule.total_steps = 10")
  model = keras.Sequential([keras.layers.Dense(1)])
  model(tf.zeros([1, 2]))
  group = optimizers.OptimizerGroup([], model.trainable_variables)
  events = []
  monkeypatch.setattr(tf.profiler.experimental, "start",
                      lambda logdir: events.append(("start", int(group.iterations.numpy()),
                                                    logdir)))
  monkeypatch.setattr(tf.profiler.experimental, "stop",
                      lambda: events.append(("stop", int(group.iterations.numpy()))))
  data = {common.IMAGE: np.ones([12, 2], np.float32), "y": np.zeros([12, 1], np.float32)}
  dataset = tf.data.Dataset.from_tensor_slices(data).batch(2).repeat()
  strategy = tf.distribute.get_strategy()
  trainer = trainer_lib.PanopticTrainer(
      strategy, model, lambda batch, out: {common.LOSS_TOTAL: tf.reduce_mean(
          tf.square(out - batch["y"]))}, group,
      strategy.experimental_distribute_dataset(dataset), global_batch_size=2,
      total_steps=6, profiler=profiler_lib.StepProfiler((3, 4), str(tmp_path)))
  for _ in range(3):   # loops of 2 steps: 1-2, 3-4, 5-6
    trainer.train(tf.constant(2))
  # Started with 2 steps done (before step 3), stopped with 4 done (after step 4).
  assert events == [("start", 2, str(tmp_path)), ("stop", 4)]
  gin.clear_config()
