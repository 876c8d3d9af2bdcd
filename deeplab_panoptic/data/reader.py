"""The tf.data input pipeline: TFRecord shards -> batches of static-shape targets.

``build_dataset(file_pattern, dataset_info, is_training, batch_size)`` reads
its settings from three records (``data/input_config.py``), built from gin
unless given; a typical recipe binds::

  InputConfig.crop_size = (128, 128)          # the one crop-size binding
  InputConfig.max_num_masks = 16
  AugmentationConfig.min_scale = 0.75         # training only
  AugmentationConfig.max_scale = 1.25
  PipelineConfig.shuffle_buffer = 512
  PipelineConfig.seed = 0

The pipeline is four small stages: ``_plan`` (checks, seed, determinism, per
replica batch size), ``_records`` (this host's files or records),
``_train_batches`` / ``_eval_batches`` (decode, preprocess, batch).

Training batches repeat forever and drop the remainder. Evaluation batches hold
every image exactly once, in file order: the last batch is filled up with
padding examples (``preprocessing.padding_example``: ``ORIGINAL_HEIGHT == 0``,
empty ``IMAGE_NAME``, void label, no masks) so that every batch has the same
static shape, which TPUs need. Evaluators must skip entries whose
``ORIGINAL_HEIGHT`` is 0. With ``PipelineConfig.pad_last_batch=False`` the last batch is
smaller instead (batch dimension None).

Determinism: with ``PipelineConfig.seed`` (or ``deterministic=True``, which uses
seed 0 when none is set), the file order, the shuffle, and every augmentation (stateless
random ops fed from a seeded per-example seed stream) are reproducible, whatever
the parallelism; otherwise parallel reads and maps may also reorder examples.

Multi-host: with an ``input_context`` (from
``strategy.distribute_datasets_from_function``) each host reads its share of
the files (or of the records, when there are fewer files than hosts) and
batches ``batch_size / num_replicas_in_sync * replicas on the host``.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Union

import gin
import tensorflow as tf

from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.data import input_config as input_config_lib
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


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What the pipeline stages need, resolved once from the arguments and configs."""
  files: List[str]
  info: dataset_info_lib.DatasetInfo
  is_training: bool
  batch_size: int            # per replica
  config: input_config_lib.InputConfig
  pipeline: input_config_lib.PipelineConfig
  seed: Optional[int]
  deterministic: Optional[bool]  # tf.data's map/interleave argument
  repeat: bool
  input_context: Optional[tf.distribute.InputContext]


def _plan(file_pattern, dataset_info, is_training, batch_size, config, pipeline,
          input_context) -> _Plan:
  """Checks the arguments and resolves the seed, determinism and batch size."""
  if batch_size < 1:
    raise ValueError(f"build_dataset: batch_size must be >= 1, got {batch_size}.")
  seed = pipeline.seed
  if pipeline.deterministic and seed is None:
    seed = 0
  files = list_files(file_pattern)
  if pipeline.verify_records:
    verify_tfrecords(files)
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  deterministic = pipeline.deterministic
  if deterministic is None:
    deterministic = True if (seed is not None or not is_training) else None
  elif not deterministic:
    deterministic = None
  repeat = is_training if pipeline.repeat is None else pipeline.repeat
  return _Plan(files, dataset_info, is_training, batch_size, config, pipeline, seed,
               deterministic, repeat, input_context)


def _records(plan: _Plan) -> tf.data.Dataset:
  """(serialized record, file path) pairs: this host's share, in file order at eval."""
  files, context = plan.files, plan.input_context
  file_ds = tf.data.Dataset.from_tensor_slices(files)
  num_pipelines = context.num_input_pipelines if context else 1
  pipeline_id = context.input_pipeline_id if context else 0
  shard_files = num_pipelines > 1 and len(files) >= num_pipelines
  if shard_files:
    file_ds = file_ds.shard(num_pipelines, pipeline_id)
  if plan.is_training and len(files) > 1:
    file_ds = file_ds.shuffle(len(files), seed=plan.seed, reshuffle_each_iteration=True)
  records = file_ds.interleave(
      lambda path: tf.data.TFRecordDataset(path).map(lambda r: (r, path)),
      # Evaluation reads the files one after the other: images in file order.
      cycle_length=(max(1, min(plan.pipeline.cycle_length, len(files)))
                    if plan.is_training else 1),
      block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=plan.deterministic)
  if num_pipelines > 1 and not shard_files:
    # Fewer files than hosts: every host reads everything and keeps its share.
    records = records.shard(num_pipelines, pipeline_id)
  if plan.pipeline.cache:
    records = records.cache()
  return records


def _decode(plan: _Plan, record: tf.Tensor, path: tf.Tensor) -> Dict[str, tf.Tensor]:
  return tfrecord.decode_record(record, path, plan.info.label_divisor,
                                plan.info.ignore_label)


def _train_batches(plan: _Plan, records: tf.data.Dataset,
                   augmentation: input_config_lib.AugmentationConfig) -> tf.data.Dataset:
  """Shuffled, repeated, augmented training batches (remainder dropped)."""
  pipeline, seed = plan.pipeline, plan.seed
  unshuffled = records
  if pipeline.shuffle_buffer > 1:
    records = records.shuffle(pipeline.shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  if plan.repeat:
    records = records.repeat()
  # One stateless [2] seed per example, from a seeded stream: augmentation is
  # reproducible whatever the map's parallelism.
  seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
  args = dict(config=plan.config, augmentation=augmentation,
              label_divisor=plan.info.label_divisor, ignore_label=plan.info.ignore_label,
              is_thing=plan.info.is_thing)
  if augmentation.copy_paste:
    # kMaX: the pasted image comes from a second, independently shuffled
    # stream of the same (per-host) records.
    partners = unshuffled
    if pipeline.shuffle_buffer > 1:
      partners = partners.shuffle(
          pipeline.shuffle_buffer, seed=None if seed is None else seed + 1,
          reshuffle_each_iteration=True)
    partners = partners.repeat()

    def train_map(record_and_path, partner, example_seed) -> Dict[str, tf.Tensor]:
      return preprocessing.preprocess_train(
          _decode(plan, *record_and_path), example_seed,
          paste_from=_decode(plan, *partner), **args)

    zipped = tf.data.Dataset.zip((records, partners, seeds))
  else:
    def train_map(record_and_path, example_seed) -> Dict[str, tf.Tensor]:
      return preprocessing.preprocess_train(_decode(plan, *record_and_path),
                                            example_seed, **args)

    zipped = tf.data.Dataset.zip((records, seeds))
  ds = zipped.map(train_map, num_parallel_calls=pipeline.num_parallel_calls,
                  deterministic=plan.deterministic)
  return ds.batch(plan.batch_size, drop_remainder=True)


def _eval_batches(plan: _Plan, records: tf.data.Dataset) -> tf.data.Dataset:
  """Every image once, in file order; the last batch padded (see the module doc)."""
  config, info, batch_size = plan.config, plan.info, plan.batch_size

  def eval_map(record, path) -> Dict[str, tf.Tensor]:
    return preprocessing.preprocess_eval(
        _decode(plan, record, path), config=config, label_divisor=info.label_divisor,
        ignore_label=info.ignore_label, is_thing=info.is_thing)

  ds = records.map(eval_map, num_parallel_calls=plan.pipeline.num_parallel_calls,
                   deterministic=plan.deterministic)
  if plan.pipeline.pad_last_batch and batch_size > 1:
    # batch_size - 1 padding examples complete the last batch; the ones left
    # over (all of them when the count divides evenly) are dropped with the
    # remainder, so no batch is made of padding only.
    padding = tf.data.Dataset.from_tensors(preprocessing.padding_example(
        crop_size=config.crop_size, max_original_size=config.max_original_size,
        max_num_masks=config.max_num_masks, label_divisor=info.label_divisor,
        ignore_label=info.ignore_label)).repeat(batch_size - 1)
    ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
  else:
    ds = ds.batch(batch_size, drop_remainder=False)
  if plan.repeat:
    ds = ds.repeat()
  return ds


@gin.configurable
def build_dataset(file_pattern: Union[str, Sequence[str]],
                  dataset_info: dataset_info_lib.DatasetInfo,
                  is_training: bool,
                  batch_size: int,
                  config: Optional[input_config_lib.InputConfig] = None,
                  augmentation: Optional[input_config_lib.AugmentationConfig] = None,
                  pipeline: Optional[input_config_lib.PipelineConfig] = None,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  ) -> tf.data.Dataset:
  """Builds the batched input pipeline.

  Args:
    file_pattern: glob(s) of TFRecord shards (a list, or comma-separated).
    dataset_info: the dataset description (label divisor, ignore label, which
      classes are things). Records must use the same ignore label; another
      label divisor is re-encoded (``tfrecord.decode_record``).
    is_training: training (augment, shuffle, repeat, drop remainder) or
      evaluation (no augmentation, file order, every image once).
    batch_size: global batch size (divided by the replicas of
      ``input_context``, when given).
    config: crop size, mask slots, evaluation resize; default: ``InputConfig()``
      from gin (in the caller's gin scope).
    augmentation: training only; default: ``AugmentationConfig()`` from gin.
    pipeline: default: ``PipelineConfig()`` from gin.
    input_context: from ``distribute_datasets_from_function``; shards the input
      between hosts.

  Returns:
    A dataset of dicts (keys in common.py), all with static shapes
    (H, W = crop_size, B = per-replica batch size, K = max_num_masks):
      IMAGE float32 [B, H, W, 3] (x / 127.5 - 1, padding 0), IMAGE_NAME string
      [B], ORIGINAL_HEIGHT/WIDTH, RESIZED_HEIGHT/WIDTH int32 [B], GT_PANOPTIC,
      GT_SEMANTIC, GT_MASK_ID int32 [B, H, W], GT_SEMANTIC_WEIGHT float32
      [B, H, W], GT_CLASSES int32 [B, K], GT_IS_THING bool [B, K]; evaluation
      also GT_PANOPTIC_ORIGINAL int32 [B, Hmax, Wmax].

  Raises:
    ValueError: on bad arguments or settings, or when no file matches.
  """
  config = config if config is not None else input_config_lib.InputConfig()
  pipeline = pipeline if pipeline is not None else input_config_lib.PipelineConfig()
  plan = _plan(file_pattern, dataset_info, is_training, batch_size, config, pipeline,
               input_context)
  records = _records(plan)
  if is_training:
    if augmentation is None:
      augmentation = input_config_lib.AugmentationConfig()
    ds = _train_batches(plan, records, augmentation)
  else:
    ds = _eval_batches(plan, records)
  options = tf.data.Options()
  options.deterministic = plan.deterministic is not None
  if input_context is not None:
    # Sharded above, per host: no further automatic sharding.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
  ds = ds.with_options(options)
  return ds.prefetch(pipeline.prefetch_batches)
