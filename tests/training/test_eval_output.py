"""What an evaluation shows: on the console a progress bar with a total (so an
ETA) on stderr and the per-class table after the result line on stdout, whose
numbers are results.json's; in TensorBoard input | ground truth | prediction.

The stand-in model and postprocessor of tests/evaluation/test_evaluator_metrics.py
make the predictions (three images, one padding example).
"""

import json

import numpy as np
import tensorflow as tf

from deeplab_panoptic.data import inspect as inspect_lib
from deeplab_panoptic.data.dataset_info import SHAPES
from deeplab_panoptic.training.evaluator import PanopticEvaluator
from tests.evaluation.test_evaluator_metrics import _examples
from tests.evaluation.test_evaluator_metrics import _postprocessor


def _evaluate(tmp_path, **kwargs):
  features, _, _, _ = _examples()
  strategy = tf.distribute.get_strategy()
  dataset = tf.data.Dataset.from_tensor_slices(features).batch(2)
  evaluator = PanopticEvaluator(
      strategy, lambda images, training: {"image": images}, _postprocessor,
      strategy.experimental_distribute_dataset(dataset), SHAPES, str(tmp_path),
      tf.Variable(7, dtype=tf.int64), num_summary_images=0, **kwargs)
  evaluator.evaluate(tf.constant(-1, tf.int32))
  with open(tmp_path / "eval" / "results.json") as f:
    return json.load(f)


def test_progress_bar_counts_the_images_against_the_total(tmp_path, capsys):
  _evaluate(tmp_path, num_images=3)
  err = capsys.readouterr().err
  final = err.replace("\r", "\n").strip().splitlines()[-1]
  # tqdm: "eval step 7: 100%|...| 3/3 [elapsed<remaining, rate]"; the padding
  # example is not counted.
  assert final.startswith("eval step 7: 100%") and "3/3 [" in final and "<" in final, err


def test_per_class_table_is_printed_with_the_results(tmp_path, capsys):
  results = _evaluate(tmp_path, progress_bar=False)
  out = capsys.readouterr().out.splitlines()
  start = next(i for i, line in enumerate(out) if line.startswith("eval  | step      7 |"))
  header = out[start + 1].split()
  assert header == ["id", "class", "kind", "|", "PQ", "SQ", "RQ", "|", "IoU", "|", "AP"]
  rows = {line.split()[1]: line.split() for line in out[start + 3:start + 3 + 5]}
  assert sorted(rows) == sorted(SHAPES.class_names)
  for name, row in rows.items():
    pq = results["per_class"].get(name)
    assert row[4:7] == ([f"{pq[k]:.2f}" for k in ("PQ", "SQ", "RQ")] if pq else ["-"] * 3)
    iou = results["per_class_IoU"].get(name)
    assert row[8] == (f"{iou:.2f}" if iou is not None else "-")
    ap = results["per_class_AP"].get(name)
    assert row[10] == (f"{ap:.2f}" if ap is not None else "-")
  assert set(results["per_class_AP"]) <= {n for n, t in zip(SHAPES.class_names,
                                                              SHAPES.is_thing) if t}


def test_no_table_when_switched_off(tmp_path, capsys):
  _evaluate(tmp_path, progress_bar=False, print_per_class=False)
  captured = capsys.readouterr()
  assert "| IoU" not in captured.out and "eval step" not in captured.err


def test_tensorboard_picture_is_input_then_ground_truth_then_prediction(tmp_path):
  """The three panels of the eval picture, each against its own overlay."""
  evaluator = PanopticEvaluator(
      tf.distribute.get_strategy(), None, _postprocessor, tf.data.Dataset.range(1), SHAPES,
      str(tmp_path), tf.Variable(0, dtype=tf.int64), num_summary_images=1)
  image = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  div = SHAPES.label_divisor
  gt = np.full((16, 16), 3 * div)          # sky
  gt[4:10, 4:10] = 0 * div + 1             # a thing
  pred = np.full((16, 16), 4 * div)        # ground, and the thing elsewhere
  pred[8:14, 2:8] = 0 * div + 1
  picture = evaluator._summary_picture(image, (16, 16), (16, 16), gt, pred)  # pylint: disable=protected-access
  assert picture.shape == (16, 48, 3)
  np.testing.assert_array_equal(picture[:, :16], image)
  np.testing.assert_array_equal(picture[:, 16:32],
                                inspect_lib.panoptic_overlay(image, gt, SHAPES))
  np.testing.assert_array_equal(picture[:, 32:], inspect_lib.panoptic_overlay(image, pred,
                                                                              SHAPES))
