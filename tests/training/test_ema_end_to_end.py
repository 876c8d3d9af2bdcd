"""EMA end to end on the kMaX shapes quickstart (tiny): train_and_eval, eval and export
use the moving averages of the weights, and training keeps its raw weights.

The reference comes from the checkpoint through tf_keras's own objects: the raw
weights under ``model`` and the averages in each optimizer's
``_model_variables_moving_average`` (in the order the optimizer was built on),
restored into a fresh model and OptimizerGroup without any of training/ema.py.
The weights each evaluation ran with and the variables of the SavedModel must be
the averages (not the raw weights); the SavedModel's outputs must equal those of
an export module around the reference model holding the averages. Slow (about
two minutes on 2 idle cores).
"""

import numpy as np
import pytest
import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic import main as main_lib
from deeplab_panoptic.data import tfrecord
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.training import evaluator as evaluator_lib
from deeplab_panoptic.training import experiment

QUICKSTART = "experiments/quickstart/kmax_deeplab_shapes.gin"


def _bindings(data):
  return [
      "TRAIN_STEPS=3", "ExperimentConfig.steps_per_loop=3",
      "ExperimentConfig.train_batch_size=2", "ExperimentConfig.eval_batch_size=2",
      f"DATA_DIR='{data}'",
      f"ExperimentConfig.train_file_pattern='{data}/train-*'",
      f"ExperimentConfig.eval_file_pattern='{data}/val-*'",
      "ensure_shapes_dataset.num_train=4", "ensure_shapes_dataset.num_val=2",
      "ensure_shapes_dataset.num_shards=1",
      "learning_rate_schedule.warmup_steps=0",
      # Large steps and a short memory: weights and averages clearly apart.
      "learning_rate_schedule.base_learning_rate=0.01",
      "make_optimizer.use_ema=True", "make_optimizer.ema_momentum=0.5",
      "PanopticEvaluator.keep_predictions=True", "PanopticEvaluator.num_summary_images=0",
      "PanopticEvaluator.progress_bar=False", "PanopticEvaluator.print_per_class=False",
  ]


def _reference(model_dir):
  """(experiment, raw weights, averages) read from the latest checkpoint by tf_keras."""
  ref = experiment.Experiment(model_dir, "export")   # builds the model, restores nothing
  group = ref._optimizer()  # pylint: disable=protected-access
  prefix = tf.train.latest_checkpoint(model_dir)
  tf.train.Checkpoint(model=ref.model, **group.checkpoint_items()).read(prefix).expect_partial()
  encoder = {id(v) for v in ref.model.pixel_encoder.trainable_variables}
  order = {"main": [v for v in ref.model.trainable_variables if id(v) not in encoder],
           "backbone": ref.model.pixel_encoder.trainable_variables}
  slot = {}
  for name, optimizer in (("main", group.main), ("backbone", group.backbone)):
    for i, v in enumerate(order[name]):
      slot[id(v)] = optimizer._model_variables_moving_average[i].numpy()  # pylint: disable=protected-access
  raw = [v.numpy() for v in ref.model.trainable_variables]
  return ref, raw, [slot[id(v)] for v in ref.model.trainable_variables]


def _assert_close(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def _val_images(data):
  files = tf.io.gfile.glob(f"{data}/val-*")
  return np.stack([tfrecord.decode_record(r)[common.IMAGE].numpy()
                   for r in tf.data.TFRecordDataset(files)])


def _saved_arrays(export_dir):
  """Every variable value the SavedModel holds, by shape."""
  reader = tf.train.load_checkpoint(f"{export_dir}/variables/variables")
  arrays = {}
  for key in reader.get_variable_to_shape_map():
    if key.endswith(".ATTRIBUTES/VARIABLE_VALUE"):
      value = reader.get_tensor(key)
      arrays.setdefault(value.shape, []).append(value)
  return arrays


def _holds(arrays, value):
  return any(np.array_equal(value, a) for a in arrays.get(value.shape, []))


@pytest.mark.slow
def test_evaluation_and_export_use_the_averages(tmp_path, monkeypatch):
  data, model_dir = tmp_path / "data", str(tmp_path / "run")
  gin.clear_config()
  main_lib.parse_gin([QUICKSTART], _bindings(data))
  seen = []   # (weights, maps) of every evaluation an Experiment runs
  eval_end = evaluator_lib.PanopticEvaluator.eval_end

  def recording_eval_end(self, state):
    seen.append(([v.numpy() for v in self.model.trainable_variables],
                 dict(self.predictions)))
    return eval_end(self, state)

  monkeypatch.setattr(evaluator_lib.PanopticEvaluator, "eval_end", recording_eval_end)
  try:
    experiment.Experiment(model_dir, "train_and_eval").run()
    ref, raw, averages = _reference(model_dir)
    moved = [i for i, (r, a) in enumerate(zip(raw, averages)) if np.abs(r - a).max() > 1e-4]
    assert len(moved) > len(raw) // 2   # the check can tell them apart

    # train_and_eval evaluated the averages, and the checkpoint written after that
    # evaluation holds the raw weights (else its "averages" would be the weights).
    _assert_close(seen[-1][0], averages)
    experiment.Experiment(model_dir, "eval").run()
    _assert_close(seen[-1][0], averages)
    for name, panoptic in seen[-2][1].items():
      np.testing.assert_array_equal(seen[-1][1][name], panoptic)

    export_dir = experiment.Experiment(model_dir, "export").run()["export_dir"]
    arrays = _saved_arrays(export_dir)
    # Training-only variables (the auxiliary heads) are not exported at all.
    exported_vars = [i for i in moved if _holds(arrays, averages[i]) or _holds(arrays, raw[i])]
    assert len(exported_vars) > len(moved) // 2
    assert all(_holds(arrays, averages[i]) and not _holds(arrays, raw[i])
               for i in exported_vars)
    images = tf.constant(_val_images(data))
    exported = tf.saved_model.load(export_dir).signatures["serving_default"](images=images)
    for v, a in zip(ref.model.trainable_variables, averages):
      v.assign(a)
    module = saved_model.PanopticExportModule(ref.model, ref.postprocessor,
                                              dataset_info=ref.info)
    expected = module.serve(images)
    np.testing.assert_array_equal(exported["panoptic"].numpy(), expected["panoptic"].numpy())
    np.testing.assert_allclose(exported["segment_scores"].numpy(),
                               expected["segment_scores"].numpy(), rtol=1e-5, atol=1e-6)
  finally:
    gin.clear_config()
