"""Times Hungarian matching: scipy (host) vs the pure-TF matcher (XLA).

Usage:
  python benchmarks/matching.py [--batch 8] [--rows 100] [--cols 128]
      [--repeats 20] [--methods scipy,tpu]

Prints one markdown table row per method: median and min wall time of one
batched call, after warm-up (compilation excluded and reported separately).
The cost is a MaX-style matching cost, -(class prob x Dice), drawn at random;
both methods are checked to reach the same optimal total.
"""

import argparse
import platform
import time
from typing import Callable, List

import numpy as np
import tensorflow as tf

from deeplab_panoptic.losses import matching


def _cost(batch: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return -(rng.uniform(size=(batch, rows, cols)) *
           rng.uniform(size=(batch, rows, cols))).astype(np.float32)


def _time(fn: Callable[[], tf.Tensor], repeats: int) -> List[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn().numpy()  # .numpy() waits for the device.
    times.append(time.perf_counter() - start)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rows", type=int, default=100)
  parser.add_argument("--cols", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--methods", default="scipy,tpu")
  args = parser.parse_args()
  cost = tf.constant(_cost(args.batch, args.rows, args.cols))
  devices = [d.device_type for d in tf.config.list_logical_devices()]
  print(f"# B={args.batch} K={args.rows} N={args.cols}, TF {tf.__version__}, "
        f"{platform.processor() or platform.machine()}, devices {devices}")
  print("| method | compiled | first call (s) | median (ms) | min (ms) |")
  print("| --- | --- | --- | --- | --- |")
  totals = {}
  for method in args.methods.split(","):
    jit = method == "tpu"
    fn = tf.function(lambda c, m=method: matching.hungarian_matching(c, m),
                     jit_compile=jit)
    start = time.perf_counter()
    matched = fn(cost).numpy()
    first = time.perf_counter() - start
    c = cost.numpy()
    totals[method] = float(np.sum(np.take_along_axis(
        c, matched[..., np.newaxis], axis=-1)))
    times = np.array(_time(lambda: fn(cost), args.repeats)) * 1e3
    print(f"| {method} | {'XLA' if jit else 'no (host numpy_function)'} | "
          f"{first:.2f} | {np.median(times):.1f} | {np.min(times):.1f} |")
  if len(totals) > 1:
    values = list(totals.values())
    assert np.allclose(values, values[0], rtol=1e-5), totals
    print(f"# same optimal total cost for all methods: {values[0]:.4f}")


if __name__ == "__main__":
  main()
