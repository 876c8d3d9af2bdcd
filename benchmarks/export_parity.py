"""Checks that an exported SavedModel, loaded in a fresh process, gives the same
maps as the in-memory model on an evaluation split: the panoptic maps, or for a
model whose postprocessor declares no panoptic result (a per-pixel semantic
model) the semantic maps.

  python benchmarks/export_parity.py --gin_file=experiments/quickstart/kmax_deeplab_shapes.gin \
      --model_dir=runs/quickstart

Step 1 (this process): restore the checkpoint, run the evaluator
(``PanopticEvaluator(keep_predictions=True)``: reader -> model -> postprocessor ->
original resolution) on every image of the eval split.
Step 2 (a fresh Python process): load <model_dir>/export and run its serving
signature on the same uint8 images. Prints the number of images whose maps differ.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def _in_memory(gin_files, gin_params, model_dir, out_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import common  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.data import tfrecord  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training import experiment  # pylint: disable=g-import-not-at-top

  main_lib.parse_gin(gin_files, gin_params)
  exp = experiment.Experiment(model_dir, "eval")
  global_step = tf.Variable(0, dtype=tf.int64)
  exp._restore(exp._checkpoint(None, global_step))  # pylint: disable=protected-access
  # The evaluator itself (results go to a scratch dir, not the model dir's eval/).
  with tempfile.TemporaryDirectory() as scratch:
    evaluator = evaluator_lib.PanopticEvaluator(
        exp.strategy, exp.model, exp.postprocessor, exp._dataset(False), exp.info,  # pylint: disable=protected-access
        scratch, global_step, keep_predictions=True)
    evaluator.evaluate(tf.constant(-1, tf.int32))
  predictions = evaluator.predictions
  metric = "PQ" if "PQ" in evaluator.last_results else "mIoU"
  print(f"evaluator: {metric} {evaluator.last_results[metric]:.4f}", flush=True)
  images = {}
  for path in sorted(tf.io.gfile.glob(exp.file_pattern(training=False))):
    for rec in tf.data.TFRecordDataset(path):
      d = tfrecord.decode_record(rec)
      images[d[common.IMAGE_NAME].numpy().decode()] = d[common.IMAGE].numpy()
  names = sorted(predictions)
  np.savez(out_path, names=np.array(names), images=np.stack([images[n] for n in names]),
           panoptic=np.stack([predictions[n] for n in names]),
           label_divisor=exp.info.label_divisor)
  return len(names)


_LOADER = """
import sys, numpy as np, tensorflow as tf
data = np.load(sys.argv[1])
fn = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
def served(image):
  # The evaluator keeps a semantic-only model's map as panoptic labels (class x divisor).
  out = fn(images=tf.constant(image[None]))
  if "panoptic" in out:
    return out["panoptic"].numpy()[0]
  return out["semantic"].numpy()[0] * int(data["label_divisor"])
out = [served(im) for im in data["images"]]
np.save(sys.argv[3], np.stack(out))
"""


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--gin_file", action="append", required=True)
  parser.add_argument("--gin_param", action="append", default=[])
  parser.add_argument("--model_dir", required=True)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    ref = os.path.join(tmp, "in_memory.npz")
    n = _in_memory(args.gin_file, args.gin_param, args.model_dir, ref)
    loaded = os.path.join(tmp, "loaded.npy")
    subprocess.run([sys.executable, "-c", _LOADER, ref,
                    os.path.join(args.model_dir, "export"), loaded], check=True)
    a = np.load(ref)["panoptic"]
    b = np.load(loaded)
    differ = int(np.sum(np.any(a != b, axis=(1, 2))))
    print(f"images: {n} | differing maps: {differ} | differing pixels: "
          f"{int(np.sum(a != b))}")
    return 1 if differ else 0


if __name__ == "__main__":
  sys.exit(main())
