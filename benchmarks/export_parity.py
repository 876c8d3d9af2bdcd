"""Checks that an exported SavedModel, loaded in a fresh process, gives the same
panoptic maps as the in-memory model on an evaluation split.

  python benchmarks/export_parity.py --gin_file=experiments/quickstart/kmax_deeplab_shapes.gin \
      --model_dir=runs/quickstart

Step 1 (this process): restore the checkpoint, run the evaluator's path (reader ->
model -> postprocessor -> original resolution) on every image of the eval split.
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
  import gin  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import common  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.data import reader, tfrecord  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training import experiment  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training.evaluator import restore_original_resolution  # pylint: disable=g-import-not-at-top

  main_lib.parse_gin(gin_files, gin_params)
  exp = experiment.Experiment(model_dir, "eval")
  exp._restore(exp._checkpoint(None, tf.Variable(0, dtype=tf.int64)))  # pylint: disable=protected-access
  pattern = exp.config.eval_file_pattern
  with gin.config_scope("eval"):
    ds = reader.build_dataset(file_pattern=pattern, dataset_info=exp.info, is_training=False,
                              batch_size=exp.config.eval_batch_size)
  predictions = {}
  for b in ds:
    pan = exp.postprocessor(exp.model(b[common.IMAGE], training=False),
                            tuple(exp.config.eval_input_size))[common.PANOPTIC].numpy()
    for i, name in enumerate(b[common.IMAGE_NAME].numpy()):
      if b[common.ORIGINAL_HEIGHT][i] == 0:
        continue
      predictions[name.decode()] = restore_original_resolution(
          pan[i], (b[common.RESIZED_HEIGHT][i], b[common.RESIZED_WIDTH][i]),
          (b[common.ORIGINAL_HEIGHT][i], b[common.ORIGINAL_WIDTH][i]))
  images = {}
  for path in sorted(tf.io.gfile.glob(pattern)):
    for rec in tf.data.TFRecordDataset(path):
      d = tfrecord.decode_record(rec)
      images[d[common.IMAGE_NAME].numpy().decode()] = d[common.IMAGE].numpy()
  names = sorted(predictions)
  np.savez(out_path, names=np.array(names), images=np.stack([images[n] for n in names]),
           panoptic=np.stack([predictions[n] for n in names]))
  return len(names)


_LOADER = """
import sys, numpy as np, tensorflow as tf
data = np.load(sys.argv[1])
fn = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
out = [fn(images=tf.constant(im[None]))["panoptic"].numpy()[0] for im in data["images"]]
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
    print(f"images: {n} | differing panoptic maps: {differ} | differing pixels: "
          f"{int(np.sum(a != b))}")
    return 1 if differ else 0


if __name__ == "__main__":
  sys.exit(main())
