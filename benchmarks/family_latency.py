"""Forward latency of kMaX / ReMaX family models: SavedModel and TFLite, one image.

Usage:
  python benchmarks/family_latency.py \
      --gin_file experiments/coco/remax_t_641_50k.gin [--gin_file ...] \
      [--size 641] [--warmup 3] [--repeats 10] [--tflite float,dynamic]

For each recipe the model is built with ``InputConfig.crop_size = (size, size)`` and its
initial weights (latency does not depend on what the weights learnt), exported
as a SavedModel and loaded back (as ``benchmarks/export_latency.py`` does), and,
with ``--tflite``, converted from the same in-memory model to TFLite (float, and
with dynamic-range quantisation: int8 weights). Timed: the SavedModel's ``serving_default`` (uint8
image in, panoptic maps out: normalisation, model, per-pixel panoptic
inference, plus the resize to the input's own size) and the TFLite ``serving_default`` (the same computation at the fixed
input size, ``deeplab_panoptic.export.tflite``), batch 1, ``--warmup`` calls left
out, then median / min / max of ``--repeats`` calls. TFLite runs on
``--tflite_threads`` threads (default: all visible CPUs), like TF's own pool.

Each TFLite model's panoptic map is also compared with the SavedModel's on the
same image (fraction of equal pixels). With initial weights and the recipe's
thresholds the maps are all void; pass zero thresholds with ``--gin_param`` (as
``tests/export/conftest.py``'s LOW_THRESHOLDS) for a comparison of
non-trivial maps. This checks the conversion, not accuracy.
"""

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import export_latency  # pylint: disable=g-import-not-at-top
from deeplab_panoptic import common  # pylint: disable=g-import-not-at-top
from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
from deeplab_panoptic.export import saved_model  # pylint: disable=g-import-not-at-top
from deeplab_panoptic.export import tflite  # pylint: disable=g-import-not-at-top

_TFLITE_KINDS = ("float", "dynamic")


def _stats(times):
  ms = np.array(times) * 1e3
  return f"{np.median(ms):.0f} | {ms.min():.0f} | {ms.max():.0f}"


def _time_calls(fn, warmup: int, repeats: int):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _export(gin_file: str, gin_params, size: int, kinds, directory: str, export_dir: str):
  """Builds the recipe's model once (initial weights) and writes the SavedModel and
  the TFLite files of ``kinds`` from it, so all runtimes hold the same weights.

  Returns:
    ``{kind: (tflite path, megabytes)}``.
  """
  from deeplab_panoptic.training import experiment  # pylint: disable=g-import-not-at-top
  main_lib.parse_gin([gin_file], [f"InputConfig.crop_size=({size}, {size})"]
                     + list(gin_params))
  exp = experiment.Experiment(os.path.join(directory, "unused_model_dir"), "export")
  module = saved_model.PanopticExportModule(exp.model, exp.postprocessor,
                                            dataset_info=exp.info)
  saved_model.export_saved_model(module, export_dir)
  files = {}
  for kind in kinds:
    path = os.path.join(directory, f"model_{kind}.tflite")
    tflite.export_tflite(module, path, dynamic_range_quantization=(kind == "dynamic"))
    files[kind] = (path, os.path.getsize(path) / 2 ** 20)
  return files


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gin_file", action="append", required=True)
  parser.add_argument("--gin_param", action="append", default=[],
                      help="Extra bindings, e.g. zero postprocessing thresholds so that "
                      "an untrained model's maps are not all void.")
  parser.add_argument("--size", type=int, default=641)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--tflite", default="",
                      help=f"Comma-separated TFLite kinds to time: {', '.join(_TFLITE_KINDS)}.")
  parser.add_argument("--tflite_threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  kinds = [k for k in args.tflite.split(",") if k]
  unknown = set(kinds) - set(_TFLITE_KINDS)
  if unknown:
    parser.error(f"--tflite: unknown kinds {sorted(unknown)}; use {_TFLITE_KINDS}.")
  os.chdir(REPO_ROOT)  # gin includes are relative to the repository.

  image = export_latency._image(args.size)  # pylint: disable=protected-access
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"TF {tf.__version__}, image {args.size}x{args.size}, batch 1, "
        f"{args.warmup} warm-up + {args.repeats} calls, TFLite threads "
        f"{args.tflite_threads}, load before: {os.getloadavg()[0]:.2f}", flush=True)
  print("| recipe | runtime | median (ms) | min (ms) | max (ms) | file (MB) | "
        "panoptic = SavedModel |")
  print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
  for gin_file in args.gin_file:
    name = os.path.splitext(os.path.basename(gin_file))[0]
    with tempfile.TemporaryDirectory() as tmp:
      export_dir = os.path.join(tmp, "export")
      files = _export(gin_file, args.gin_param, args.size, kinds, tmp, export_dir)
      loaded = tf.saved_model.load(export_dir)
      serve = loaded.signatures["serving_default"]
      images = tf.constant(image[None])
      reference = serve(images=images)[common.PANOPTIC].numpy()
      size_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(export_dir)
                    for f in fs) / 2 ** 20
      times = _time_calls(lambda: {k: v.numpy() for k, v in serve(images=images).items()},
                          args.warmup, args.repeats)
      print(f"| {name} | SavedModel | {_stats(times)} | {size_mb:.1f} | "
            f"({len(np.unique(reference))} segments) |", flush=True)
      for kind, (path, mb) in files.items():
        interpreter = tf.lite.Interpreter(model_path=path, num_threads=args.tflite_threads)
        runner = interpreter.get_signature_runner()
        got = runner(images=image[None])[common.PANOPTIC]
        agreement = float(np.mean(got == reference))
        times = _time_calls(lambda: runner(images=image[None]), args.warmup, args.repeats)
        print(f"| {name} | TFLite {kind} | {_stats(times)} | {mb:.1f} | "
              f"{100 * agreement:.2f}% |", flush=True)

if __name__ == "__main__":
  main()
