r"""Input pipeline throughput: decoded + augmented training images per second.

  python benchmarks/input_pipeline.py [--crops=641,1281] [--batch_size=8] \
      [--num_records=64] [--seconds=30] [--data_dir=D] [--copy_paste=1] \
      [--num_parallel_calls=-1]

Writes ``--num_records`` synthetic COCO-sized records (640x480 JPEG, quality 90,
3 stuff bands and 12-20 thing ellipses, labels with the COCO description) unless
``--data_dir`` already holds them, then for each crop builds the training
pipeline of the kMaX / ReMaX COCO recipe (random scale 0.3-1.7 by 0.1, flip,
crop, panoptic copy-paste, colour jitter; targets with 128 mask slots) and
times whole batches after a warm-up. Prints a markdown table row per crop.
"""

import argparse
import io
import os
import tempfile
import time

import numpy as np
from PIL import Image
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import input_config
from deeplab_panoptic.data import reader
from deeplab_panoptic.data import tfrecord


def _synthetic_example(rng: np.random.Generator, info: dataset_info.DatasetInfo,
                       index: int) -> tf.train.Example:
  """A 480x640 JPEG with smooth colours and a COCO-like label (~20 segments)."""
  height, width = 480, 640
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  stuff = info.stuff_ids
  things = info.thing_ids
  bands = np.sort(rng.uniform(0, height, 2))
  band = (yy > bands[0]).astype(np.int32) + (yy > bands[1])
  stuff_classes = rng.choice(stuff, 3, replace=False)
  panoptic = stuff_classes[band] * info.label_divisor
  image = np.stack([np.sin(xx / rng.uniform(30, 90) + c) * 60 + 120 + band * 30
                    for c in range(3)], -1)
  next_instance = {}
  for _ in range(int(rng.integers(12, 21))):
    cls = int(rng.choice(things))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(10, 120), rng.uniform(10, 120)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    if mask.sum() < 50:
      continue
    instance = next_instance.get(cls, 0) + 1
    next_instance[cls] = instance
    panoptic = np.where(mask, cls * info.label_divisor + instance, panoptic)
    image[mask] = rng.uniform(0, 255, 3) + 20 * np.sin(xx[mask] / 7)[:, None]
  buf = io.BytesIO()
  Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, format="JPEG",
                                                                 quality=90)
  return tfrecord.make_example(buf.getvalue(), "jpeg", f"synthetic_{index:06d}.jpg",
                               height, width, panoptic.astype(np.int32),
                               info.label_divisor, info.ignore_label)


def write_records(data_dir: str, num_records: int, info: dataset_info.DatasetInfo,
                  num_shards: int = 4) -> str:
  """Writes the synthetic shards unless present; returns their glob."""
  pattern = os.path.join(data_dir, "bench-*.tfrecord")
  if len(tf.io.gfile.glob(pattern)) == num_shards:
    return pattern
  os.makedirs(data_dir, exist_ok=True)
  rng = np.random.default_rng(0)
  for shard in range(num_shards):
    path = os.path.join(data_dir, f"bench-{shard:05d}-of-{num_shards:05d}.tfrecord")
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
      for i in range(shard, num_records, num_shards):
        writer.write(_synthetic_example(rng, info, i).SerializeToString())
    os.replace(path + ".tmp", path)
  return pattern


def measure(pattern: str, info: dataset_info.DatasetInfo, crop: int, batch_size: int,
            seconds: float, copy_paste: bool, num_parallel_calls: int) -> dict:
  """Images per second of the training pipeline at ``crop`` x ``crop``."""
  ds = reader.build_dataset(
      pattern, info, is_training=True, batch_size=batch_size,
      config=input_config.InputConfig(crop_size=(crop, crop), max_num_masks=128),
      augmentation=input_config.AugmentationConfig(
          min_scale=0.3, max_scale=1.7, scale_step=0.1, flip_probability=0.5,
          copy_paste=copy_paste, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
      pipeline=input_config.PipelineConfig(shuffle_buffer=64,
                                           num_parallel_calls=num_parallel_calls))
  iterator = iter(ds)
  for _ in range(3):  # Warm-up: graph tracing, autotuning, first reads.
    batch = next(iterator)
  assert batch[common.IMAGE].shape == (batch_size, crop, crop, 3)
  count = 0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(iterator)
    batch[common.GT_MASK_ID].numpy()
    count += batch_size
  elapsed = time.perf_counter() - start
  return {"crop": crop, "images": count, "seconds": elapsed,
          "images_per_second": count / elapsed}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--crops", default="641,1281")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--num_records", type=int, default=64)
  parser.add_argument("--seconds", type=float, default=30.0)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--copy_paste", type=int, default=1)
  parser.add_argument("--num_parallel_calls", type=int, default=tf.data.AUTOTUNE)
  args = parser.parse_args()
  info = dataset_info.dataset_info(name="coco")
  data_dir = args.data_dir or os.path.join(tempfile.gettempdir(), "dp_bench_records")
  pattern = write_records(data_dir, args.num_records, info)
  print(f"CPU cores visible: {os.cpu_count()}; records: {pattern}")
  print("| crop | batch | copy-paste | images | seconds | images/s |")
  print("| --- | --- | --- | --- | --- | --- |")
  for crop in (int(c) for c in args.crops.split(",")):
    r = measure(pattern, info, crop, args.batch_size, args.seconds,
                bool(args.copy_paste), args.num_parallel_calls)
    print(f"| {crop} | {args.batch_size} | {'yes' if args.copy_paste else 'no'} | "
          f"{r['images']} | {r['seconds']:.1f} | {r['images_per_second']:.2f} |",
          flush=True)


if __name__ == "__main__":
  main()
