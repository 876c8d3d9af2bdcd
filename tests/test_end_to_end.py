"""Quickstart end to end on a tiny budget: train, eval, export, reload in a fresh process.

Slow (about a minute or two on 2 cores); runs in CI all the same.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, run_main

QUICKSTART = "experiments/quickstart/kmax_deeplab_shapes.gin"


def _params(tmp_path):
  data = tmp_path / "data"
  return [
      f"--gin_file={QUICKSTART}",
      "--gin_param=TRAIN_STEPS=4",
      "--gin_param=ExperimentConfig.steps_per_loop=2",
      "--gin_param=ExperimentConfig.train_batch_size=4",
      "--gin_param=ExperimentConfig.eval_batch_size=4",
      f"--gin_param=DATA_DIR='{data}'",
      f"--gin_param=ExperimentConfig.train_file_pattern='{data}/train-*'",
      f"--gin_param=ExperimentConfig.eval_file_pattern='{data}/val-*'",
      "--gin_param=ensure_shapes_dataset.num_train=16",
      "--gin_param=ensure_shapes_dataset.num_val=6",
      "--gin_param=ensure_shapes_dataset.num_shards=2",
      "--gin_param=learning_rate_schedule.warmup_steps=0",
  ]


@pytest.mark.slow
def test_quickstart_train_eval_export_and_reload(tmp_path):
  model_dir = tmp_path / "run"
  params = _params(tmp_path)

  # Steps 2..3 span two loops of 2 steps: profiled into <model_dir>/train.
  proc = run_main(*params, "--mode=train_and_eval", f"--model_dir={model_dir}",
                  "--profile_steps=2,3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "train | step      4/4 | loss" in out and "images/s | ETA" in out, out[-2000:]
  assert "train | profile of steps 2..3 written to" in out, out[-2000:]
  profiles = list((model_dir / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(profiles) == 1 and profiles[0].stat().st_size > 0

  # Results, operative config, checkpoints and TensorBoard events are where promised.
  results = json.loads((model_dir / "eval" / "results.json").read_text())
  assert results["step"] == 4
  for key in ("PQ", "SQ", "RQ", "PQ_thing", "PQ_stuff", "per_class", "mIoU", "AP"):
    assert key in results
  assert 0.0 <= results["PQ"] <= 100.0
  # Mask2Former's instance results of the quickstart, as a COCO results JSON.
  detections = json.loads(open(results["instance_results_json"]).read())
  assert len(detections) == 6 * 96 and len({d["image_id"] for d in detections}) == 6
  assert (model_dir / "operative_config.gin").read_text().strip()
  assert "PQ_WEIGHT = 3.0" in (model_dir / "operative_config.gin").read_text()
  assert any(f.startswith("ckpt-4") for f in os.listdir(model_dir))
  assert any("tfevents" in f for f in os.listdir(model_dir / "train"))
  assert any("tfevents" in f for f in os.listdir(model_dir / "eval"))

  # eval mode restores the checkpoint and gives the same numbers.
  proc = run_main(*params, "--mode=eval", f"--model_dir={model_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.loads((model_dir / "eval" / "results.json").read_text())
  assert again["PQ"] == pytest.approx(results["PQ"], abs=1e-9)

  proc = run_main(*params, "--mode=export", f"--model_dir={model_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  export_dir = model_dir / "export"
  assert (export_dir / "saved_model.pb").exists()

  # In memory: the restored model served by the export module, and the evaluator's
  # predictions on the same val images.
  in_memory = tmp_path / "in_memory.npz"
  script = textwrap.dedent(f"""
      import sys, numpy as np, tensorflow as tf
      sys.path.insert(0, {REPO_ROOT!r})
      from deeplab_panoptic import main as main_lib, common
      from deeplab_panoptic.data import tfrecord
      from deeplab_panoptic.training import experiment
      from deeplab_panoptic.export import saved_model
      main_lib.parse_gin([{QUICKSTART!r}], {[p.split('=', 1)[1] for p in params[1:]]!r})
      exp = experiment.Experiment({str(model_dir)!r}, "export")
      gs = tf.Variable(0, dtype=tf.int64)
      exp._restore(exp._checkpoint(None, gs))
      images, names = [], []
      for rec in tf.data.TFRecordDataset(tf.io.gfile.glob({str(tmp_path / "data" / "val-*")!r})):
        d = tfrecord.decode_record(rec)
        images.append(d[common.IMAGE].numpy()); names.append(d[common.IMAGE_NAME].numpy())
      module = saved_model.PanopticExportModule(exp.model, exp.postprocessor)
      batch = np.stack(images)
      served = module.serve(tf.constant(batch))["panoptic"].numpy()
      # The evaluator itself (results to a scratch dir): its maps are the served maps.
      from deeplab_panoptic.training.evaluator import PanopticEvaluator
      evaluator = PanopticEvaluator(exp.strategy, exp.model, exp.postprocessor,
                                    exp._dataset(False), exp.info, {str(tmp_path / "scratch")!r},
                                    gs, keep_predictions=True)
      evaluator.evaluate(tf.constant(-1, tf.int32))
      by_name = {{n.encode(): p for n, p in evaluator.predictions.items()}}
      assert sorted(by_name) == sorted(names), (sorted(by_name), names)
      evaluator = np.stack([by_name[n] for n in names])
      np.savez({str(in_memory)!r}, images=batch, served=served, evaluator=evaluator)
  """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ref = np.load(in_memory)
  np.testing.assert_array_equal(ref["served"], ref["evaluator"])

  # A fresh process loads the SavedModel and gets the same panoptic maps, one image
  # at a time and as a batch.
  loaded_npz = tmp_path / "loaded.npz"
  script = textwrap.dedent(f"""
      import numpy as np, tensorflow as tf
      images = np.load({str(in_memory)!r})["images"]
      fn = tf.saved_model.load({str(export_dir)!r}).signatures["serving_default"]
      batch = fn(images=tf.constant(images))["panoptic"].numpy()
      single = np.stack([fn(images=tf.constant(im[None]))["panoptic"].numpy()[0] for im in images])
      np.savez({str(loaded_npz)!r}, batch=batch, single=single)
  """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = np.load(loaded_npz)
  assert loaded["batch"].shape == ref["images"].shape[:3]
  np.testing.assert_array_equal(loaded["batch"], ref["served"])
  np.testing.assert_array_equal(loaded["single"], ref["served"])
