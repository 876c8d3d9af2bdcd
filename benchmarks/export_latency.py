"""Latency per image of an exported SavedModel, through each serving signature.

Usage:
  python benchmarks/export_latency.py [--gin_file experiments/quickstart/kmax_deeplab_shapes.gin]
      [--size 641] [--warmup 3] [--repeats 20] [--saved_model DIR]
      [--signatures serving_default,serve_encoded_images,serve_tf_example]

Without ``--saved_model`` the model of ``--gin_file`` is built with
``InputConfig.crop_size = (size, size)`` (export input size and evaluation size), exported
to a temporary folder with its initial weights (latency does not depend on what
the weights learnt) and loaded back with ``tf.saved_model.load``, as a server
would. Each signature is then called on one ``size x size`` image (batch 1): a
uint8 tensor, the same image as a JPEG file (quality 90), and as a serialized
tf.Example (``--signatures`` picks some of them: large models on a slow CPU).
The first ``--warmup`` calls are left out (tracing, allocation);
the table gives the median, min and max of the next ``--repeats`` calls, wall
time of the call until its outputs are on the host.
"""

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from typing import Callable, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
from deeplab_panoptic.data import tfrecord  # pylint: disable=g-import-not-at-top
from deeplab_panoptic.export import saved_model  # pylint: disable=g-import-not-at-top


def _export(gin_file: str, size: int, export_dir: str) -> None:
  from deeplab_panoptic.training import experiment  # pylint: disable=g-import-not-at-top
  main_lib.parse_gin([gin_file], [f"InputConfig.crop_size=({size}, {size})"])
  exp = experiment.Experiment(os.path.join(export_dir, "unused_model_dir"), "export")
  module = saved_model.PanopticExportModule(exp.model, exp.postprocessor,
                                            dataset_info=exp.info)
  saved_model.export_saved_model(module, export_dir)


def _image(size: int) -> np.ndarray:
  # Smooth colours and discs rather than noise, so JPEG sizes are photo-like.
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:size, :size] / size
  image = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in rng.uniform(0, 3, 3)], -1)
  for _ in range(8):
    cy, cx, r = rng.uniform(0, 1, 3) * [1, 1, 0.3]
    image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(-1, 1, 3)
  return np.clip(127.5 * (image + 1), 0, 255).astype(np.uint8)


def _time(fn: Callable[[], dict], warmup: int, repeats: int) -> List[float]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    for value in result.values():
      value.numpy()  # On the host.
    times.append(time.perf_counter() - start)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gin_file", default="experiments/quickstart/kmax_deeplab_shapes.gin")
  parser.add_argument("--size", type=int, default=641)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--saved_model", default=None,
                      help="Time this export instead of building one from --gin_file.")
  parser.add_argument("--signatures", default=",".join(saved_model.SIGNATURE_INPUTS),
                      help="Comma-separated signatures to time (default: all).")
  args = parser.parse_args()
  wanted = [s for s in args.signatures.split(",") if s]
  unknown = set(wanted) - set(saved_model.SIGNATURE_INPUTS)
  if unknown:
    parser.error(f"--signatures: unknown {sorted(unknown)}; choose from "
                 f"{list(saved_model.SIGNATURE_INPUTS)}.")
  os.chdir(REPO_ROOT)  # gin includes are relative to the repository.

  with tempfile.TemporaryDirectory() as tmp:
    export_dir = args.saved_model
    if export_dir is None:
      export_dir = os.path.join(tmp, "export")
      start = time.perf_counter()
      _export(args.gin_file, args.size, export_dir)
      print(f"exported {args.gin_file} at {args.size}x{args.size} in "
            f"{time.perf_counter() - start:.1f} s", flush=True)
    loaded = tf.saved_model.load(export_dir)
    info = saved_model.read_export_info(loaded)
    signatures = loaded.signatures

    image = _image(args.size)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    example = tfrecord.make_example(jpeg, "jpeg", "bench.jpg", args.size, args.size, None,
                                    info["dataset_info"]["label_divisor"],
                                    info["dataset_info"]["ignore_label"])
    calls = {
        "serving_default (uint8)": lambda: signatures["serving_default"](
            images=tf.constant(image[None])),
        "serve_encoded_images (JPEG)": lambda: signatures["serve_encoded_images"](
            encoded_images=tf.constant([jpeg])),
        "serve_tf_example": lambda: signatures["serve_tf_example"](
            serialized_examples=tf.constant([example.SerializeToString()])),
        "serve_padded_batch (uint8)": lambda: signatures["serve_padded_batch"](
            images=tf.constant(image[None]),
            image_sizes=tf.constant([image.shape[:2]], tf.int32)),
    }
    calls = {name: fn for name, fn in calls.items() if name.split(" ")[0] in wanted}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"TF {tf.__version__}, model input {info['input_size']}, image "
          f"{args.size}x{args.size}, batch 1, {args.warmup} warm-up + {args.repeats} calls")
    print("| signature | median (ms) | min (ms) | max (ms) |")
    print("| --- | --- | --- | --- |")
    for name, fn in calls.items():
      times = np.array(_time(fn, args.warmup, args.repeats)) * 1e3
      print(f"| {name} | {np.median(times):.1f} | {times.min():.1f} | {times.max():.1f} |",
            flush=True)


if __name__ == "__main__":
  main()
