"""The tf.data input pipeline: TFRecord shards -> batches of static-shape targets.

``build_dataset`` is gin-configurable; a typical binding::

  train/build_dataset.file_pattern = '/data/shapes/train-*.tfrecord'
  train/build_dataset.is_training = True
  build_dataset.dataset_info = @dataset_info()
  build_dataset.crop_size = (128, 128)
  build_dataset.max_num_masks = 16

Training batches repeat forever and drop the remainder. Evaluation batches hold
every image exactly once, in file order: the last batch is filled up with
padding examples (``preprocessing.padding_example``: ``ORIGINAL_HEIGHT == 0``,
empty ``IMAGE_NAME``, void label, no masks) so that every batch has the same
static shape, which TPUs need. Evaluators must skip entries whose
``ORIGINAL_HEIGHT`` is 0. With ``pad_last_batch=False`` the last batch is
smaller instead (batch dimension None).

Determinism: with a ``seed`` (or ``deterministic=True``, which uses seed 0 when
none is set), the file order, the shuffle, and every augmentation (stateless
random ops fed from a seeded per-example seed stream) are reproducible, whatever
the parallelism; otherwise parallel reads and maps may also reorder examples.

Multi-host: with an ``input_context`` (from
``strategy.distribute_datasets_from_function``) each host reads its share of
the files (or of the records, when there are fewer files than hosts) and
batches ``batch_size / num_replicas_in_sync * replicas on the host``.
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import gin
import tensorflow as tf

from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.data import preprocessing
from deeplab_panoptic.data import tfrecord


def list_files(file_pattern: Union[str, Sequence[str]], what: str = "build_dataset"
               ) -> List[str]:
  """Sorted files matching one or more glob patterns (comma-separated allowed).

  Args:
    file_pattern: the pattern(s).
    what: the caller, for messages.

  Raises:
    ValueError: if a pattern matches no file.
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  patterns = [p.strip() for pat in patterns for p in pat.split(",") if p.strip()]
  if not patterns:
    raise ValueError(f"{what}: file_pattern is empty.")
  files = []
  for pattern in patterns:
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise ValueError(f"{what}: no file matches {pattern!r}.")
    files.extend(matched)
  return sorted(set(files))


def verify_tfrecords(file_pattern: Union[str, Sequence[str]]) -> int:
  """Reads every record of the matching files and checks that it parses.

  Returns:
    The number of records.

  Raises:
    ValueError: naming the file and record index of the first bad record.
  """
  total = 0
  for path, example in tfrecord.read_examples(list_files(file_pattern)):
    if tfrecord.IMAGE_ENCODED not in example.features.feature:
      raise ValueError(f"Corrupt TFRecord file {path}: a record lacks the feature "
                       f"{tfrecord.IMAGE_ENCODED!r}.")
    total += 1
  return total


@gin.configurable
def build_dataset(file_pattern: Union[str, Sequence[str]],
                  dataset_info: dataset_info_lib.DatasetInfo,
                  is_training: bool,
                  batch_size: int,
                  crop_size: Tuple[int, int],
                  max_num_masks: int = 128,
                  min_scale: float = 0.5,
                  max_scale: float = 2.0,
                  scale_step: float = 0.1,
                  flip_probability: float = 0.5,
                  shuffle_buffer: int = 1000,
                  seed: Optional[int] = None,
                  max_original_size: Optional[Tuple[int, int]] = None,
                  pad_last_batch: bool = True,
                  repeat: Optional[bool] = None,
                  cache: bool = False,
                  cycle_length: int = 4,
                  num_parallel_calls: int = tf.data.AUTOTUNE,
                  prefetch_batches: int = tf.data.AUTOTUNE,
                  verify_records: bool = False,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  deterministic: Optional[bool] = None,
                  train_resize: str = preprocessing.RANDOM_SCALE,
                  min_short_side: int = 480,
                  max_short_side: int = 800,
                  short_side_step: int = 32,
                  max_long_side: int = 1333,
                  copy_paste: bool = False,
                  copy_paste_scale_multiplier: float = 0.5,
                  copy_paste_stuff_probability: float = 0.5,
                  brightness: float = 0.0,
                  contrast: float = 0.0,
                  saturation: float = 0.0,
                  hue: float = 0.0,
                  eval_resize: str = preprocessing.FIT_SHRINK_ONLY,
                  eval_short_side: int = 800,
                  ) -> tf.data.Dataset:
  """Builds the batched input pipeline.

  Args:
    file_pattern: glob(s) of TFRecord shards (a list, or comma-separated).
    dataset_info: the dataset description (label divisor, ignore label, which
      classes are things). Records must use the same divisor and ignore label.
    is_training: training (augment, shuffle, repeat, drop remainder) or
      evaluation (no augmentation, file order, every image once).
    batch_size: global batch size (divided by the replicas of
      ``input_context``, when given).
    crop_size: (height, width) of every output image.
    max_num_masks: K, ground-truth mask slots per image.
    min_scale, max_scale, scale_step: training random scale; the factor is
      ``min_scale + k * scale_step`` (uniform if ``scale_step`` is 0).
    flip_probability: training horizontal-flip probability.
    shuffle_buffer: training shuffle buffer (serialized records).
    seed: makes the pipeline reproducible.
    max_original_size: (Hmax, Wmax) of eval ``GT_PANOPTIC_ORIGINAL``; default
      ``crop_size``. A larger image stops evaluation with an error naming it.
    pad_last_batch: evaluation: pad the last batch with padding examples
      (static batch size) instead of making it smaller.
    repeat: repeat forever; default ``is_training``.
    cache: keep the serialized records in memory after the first pass (small
      datasets).
    cycle_length: files read in parallel.
    num_parallel_calls: parallelism of the decode/augment map.
    prefetch_batches: batches to prefetch.
    verify_records: read every record once before building (names a damaged
      file; costs a full pass over the data).
    input_context: from ``distribute_datasets_from_function``; shards the input
      between hosts.
    deterministic: True: reproducible order and augmentation (seed 0 unless
      ``seed`` is set); False: allow reordering even with a seed (faster);
      None: deterministic when ``seed`` is set or when evaluating.
    train_resize: ``random_scale`` (MaX / kMaX: ``min_scale .. max_scale``) or
      ``random_short_side`` (Panoptic SegFormer: shorter side
      ``min_short_side .. max_short_side`` by ``short_side_step``, longer side
      <= ``max_long_side``); either is then flipped, padded to ``crop_size``
      and randomly cropped (a static shape).
    min_short_side, max_short_side, short_side_step, max_long_side: see
      ``train_resize``; ``max_long_side`` also caps ``eval_resize='short_side'``.
    copy_paste: training: panoptic copy-paste (kMaX / ReMaX) from a second,
      independently shuffled stream of the same records.
    copy_paste_scale_multiplier: the pasted image's scale range is the main
      one times this (kMaX: 0.5).
    copy_paste_stuff_probability: probability of pasting each stuff class of
      the other image (all its things are pasted).
    brightness, contrast, saturation, hue: training colour jitter strengths (0:
      off), see ``preprocessing.color_jitter``.
    eval_resize: evaluation resize before padding: ``fit_shrink_only`` (only
      images larger than the crop are shrunk; what export's ``fit_and_pad``
      mirrors), ``longer_side_to_crop`` (always scaled to fit the crop, one side
      touching it) or ``short_side`` (shorter side ``eval_short_side``, longer
      side <= ``max_long_side``, within the crop).
    eval_short_side: see ``eval_resize``.

  Returns:
    A dataset of dicts (keys in common.py), all with static shapes
    (H, W = crop_size, B = per-replica batch size, K = max_num_masks):
      IMAGE float32 [B, H, W, 3] (x / 127.5 - 1, padding 0), IMAGE_NAME string
      [B], ORIGINAL_HEIGHT/WIDTH, RESIZED_HEIGHT/WIDTH int32 [B], GT_PANOPTIC,
      GT_SEMANTIC, GT_MASK_ID int32 [B, H, W], GT_SEMANTIC_WEIGHT float32
      [B, H, W], GT_CLASSES int32 [B, K], GT_IS_THING bool [B, K]; evaluation
      also GT_PANOPTIC_ORIGINAL int32 [B, Hmax, Wmax].

  Raises:
    ValueError: on bad arguments or when no file matches.
  """
  crop_size = tuple(int(x) for x in crop_size)
  if len(crop_size) != 2 or min(crop_size) < 1:
    raise ValueError(f"build_dataset: crop_size must be (height, width), got {crop_size}.")
  if batch_size < 1 or max_num_masks < 1:
    raise ValueError(f"build_dataset: batch_size ({batch_size}) and max_num_masks "
                     f"({max_num_masks}) must be >= 1.")
  if is_training and not 0 < min_scale <= max_scale:
    raise ValueError(f"build_dataset: need 0 < min_scale <= max_scale, got "
                     f"{min_scale}, {max_scale}.")
  if train_resize not in preprocessing.TRAIN_RESIZE_MODES:
    raise ValueError(f"build_dataset: train_resize must be one of "
                     f"{preprocessing.TRAIN_RESIZE_MODES}, got {train_resize!r}.")
  if eval_resize not in preprocessing.EVAL_RESIZE_MODES:
    raise ValueError(f"build_dataset: eval_resize must be one of "
                     f"{preprocessing.EVAL_RESIZE_MODES}, got {eval_resize!r}.")
  if not 0 < min_short_side <= max_short_side or max_long_side < 1:
    raise ValueError(f"build_dataset: need 0 < min_short_side <= max_short_side and "
                     f"max_long_side >= 1, got {min_short_side}, {max_short_side}, "
                     f"{max_long_side}.")
  for jitter_name, value in (("brightness", brightness), ("contrast", contrast),
                             ("saturation", saturation), ("hue", hue)):
    if not 0 <= value <= (0.5 if jitter_name == "hue" else 1.0):
      raise ValueError(f"build_dataset: {jitter_name} must lie in [0, "
                       f"{0.5 if jitter_name == 'hue' else 1}], got {value}.")
  max_original_size = tuple(int(x) for x in (max_original_size or crop_size))
  if repeat is None:
    repeat = is_training
  if deterministic and seed is None:
    seed = 0
  files = list_files(file_pattern)
  if verify_records:
    verify_tfrecords(files)
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  if deterministic is None:
    deterministic = True if (seed is not None or not is_training) else None
  elif not deterministic:
    deterministic = None

  file_ds = tf.data.Dataset.from_tensor_slices(files)
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  shard_files = num_pipelines > 1 and len(files) >= num_pipelines
  if shard_files:
    file_ds = file_ds.shard(num_pipelines, pipeline_id)
  if is_training and len(files) > 1:
    file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  records = file_ds.interleave(
      lambda path: tf.data.TFRecordDataset(path).map(lambda r: (r, path)),
      # Evaluation reads the files one after the other: images in file order.
      cycle_length=max(1, min(cycle_length, len(files))) if is_training else 1,
      block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if num_pipelines > 1 and not shard_files:
    # Fewer files than hosts: every host reads everything and keeps its share.
    records = records.shard(num_pipelines, pipeline_id)
  if cache:
    records = records.cache()
  unshuffled_records = records

  common_args = dict(label_divisor=dataset_info.label_divisor,
                     ignore_label=dataset_info.ignore_label,
                     is_thing=dataset_info.is_thing, max_num_masks=max_num_masks)

  def decode(record, path):
    return tfrecord.decode_record(record, path, dataset_info.label_divisor,
                                  dataset_info.ignore_label)

  if is_training:
    if shuffle_buffer > 1:
      records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
      records = records.repeat()
    # One stateless [2] seed per example, from a seeded stream: augmentation is
    # reproducible whatever the map's parallelism.
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    train_args = dict(
        crop_size=crop_size, min_scale=min_scale, max_scale=max_scale,
        scale_step=scale_step, flip_probability=flip_probability,
        train_resize=train_resize, min_short_side=min_short_side,
        max_short_side=max_short_side, short_side_step=short_side_step,
        max_long_side=max_long_side,
        copy_paste_scale_multiplier=copy_paste_scale_multiplier,
        copy_paste_stuff_probability=copy_paste_stuff_probability,
        brightness=brightness, contrast=contrast, saturation=saturation, hue=hue,
        **common_args)

    if copy_paste:
      # kMaX: the pasted image comes from a second, independently shuffled
      # stream of the same (per-host) records.
      partners = unshuffled_records
      if shuffle_buffer > 1:
        partners = partners.shuffle(
            shuffle_buffer, seed=None if seed is None else seed + 1,
            reshuffle_each_iteration=True)
      partners = partners.repeat()

      def train_map(record_and_path, partner, example_seed) -> Dict[str, tf.Tensor]:
        return preprocessing.preprocess_train(
            decode(*record_and_path), example_seed, paste_from=decode(*partner),
            **train_args)

      zipped = tf.data.Dataset.zip((records, partners, seeds))
    else:
      def train_map(record_and_path, example_seed) -> Dict[str, tf.Tensor]:
        return preprocessing.preprocess_train(decode(*record_and_path), example_seed,
                                              **train_args)

      zipped = tf.data.Dataset.zip((records, seeds))
    ds = zipped.map(train_map, num_parallel_calls=num_parallel_calls,
                    deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    def eval_map(record, path) -> Dict[str, tf.Tensor]:
      return preprocessing.preprocess_eval(
          decode(record, path), crop_size=crop_size,
          max_original_size=max_original_size, eval_resize=eval_resize,
          eval_short_side=eval_short_side, max_long_side=max_long_side, **common_args)

    ds = records.map(eval_map, num_parallel_calls=num_parallel_calls,
                     deterministic=deterministic)
    if pad_last_batch and batch_size > 1:
      # batch_size - 1 padding examples complete the last batch; the ones left
      # over (all of them when the count divides evenly) are dropped with the
      # remainder, so no batch is made of padding only.
      padding = tf.data.Dataset.from_tensors(preprocessing.padding_example(
          crop_size=crop_size, max_original_size=max_original_size,
          max_num_masks=max_num_masks, label_divisor=dataset_info.label_divisor,
          ignore_label=dataset_info.ignore_label)).repeat(batch_size - 1)
      ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
    else:
      ds = ds.batch(batch_size, drop_remainder=False)
    if repeat:
      ds = ds.repeat()
  options = tf.data.Options()
  options.deterministic = deterministic is not None
  if input_context is not None:
    # Sharded above, per host: no further automatic sharding.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
  ds = ds.with_options(options)
  return ds.prefetch(prefetch_batches)
