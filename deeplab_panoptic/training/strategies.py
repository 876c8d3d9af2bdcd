"""Distribution strategy from flags and gin."""

from typing import Optional

import gin
import tensorflow as tf
from official.common import distribute_utils


def split_cpu(num_devices: int) -> None:
  """Splits the first physical CPU into ``num_devices`` logical devices.

  Lets MirroredStrategy run several replicas on one CPU, so multi-replica
  behaviour (gradient all-reduce, global batch semantics, synchronized batch
  norm) is testable without accelerators. Must run before TensorFlow
  initialises its devices (before the first op).

  Raises:
    RuntimeError: TensorFlow's devices were already initialised with another split.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
  try:
    tf.config.set_logical_device_configuration(cpu, wanted)
  except RuntimeError as e:
    if len(tf.config.list_logical_devices("CPU")) != num_devices:
      raise RuntimeError(
          f"build_strategy.num_cpu_devices={num_devices}: TensorFlow's devices were "
          "initialised before the split; set it before anything runs a TensorFlow op."
      ) from e


@gin.configurable
def build_strategy(distribution_strategy: str = "off", tpu: Optional[str] = None,
                   num_gpus: Optional[int] = None,
                   num_cpu_devices: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy.

  Args:
    distribution_strategy: "off" (default strategy), "one_device", "mirrored",
      "multi_worker_mirrored" or "tpu".
    tpu: TPU name or address (``--tpu``); implies "tpu".
    num_gpus: GPUs for "mirrored" / "one_device"; None: every visible GPU
      (one for "one_device"), the CPU when there is none; 0: the CPU.
    num_cpu_devices: > 0 splits the CPU into this many logical devices and, with
      "mirrored" and no GPU, puts one replica on each (testing multi-replica runs
      on CPU).
  """
  if tpu:
    distribution_strategy = "tpu"
  if num_gpus is None:
    visible = len(tf.config.list_physical_devices("GPU"))
    num_gpus = min(visible, 1) if distribution_strategy == "one_device" else visible
  if num_cpu_devices > 0:
    split_cpu(num_cpu_devices)
    if distribution_strategy == "mirrored" and num_gpus == 0:
      devices = [d.name for d in tf.config.list_logical_devices("CPU")]
      return tf.distribute.MirroredStrategy(
          devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=distribution_strategy, num_gpus=num_gpus, tpu_address=tpu)


def describe(strategy: tf.distribute.Strategy) -> str:
  """One line: the strategy, its replicas and their devices (what a run prints)."""
  try:
    devices = list(strategy.extended.worker_devices)
  except RuntimeError:  # The default strategy: TensorFlow's own placement.
    gpus = tf.config.list_logical_devices("GPU")
    devices = [gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name]
  shown = ", ".join(d.rsplit("/device:", 1)[-1] for d in devices)
  line = (f"strategy | {type(strategy).__name__.lstrip('_')} | "
          f"{strategy.num_replicas_in_sync} replica(s) in sync | this worker: {shown}")
  if devices and all("CPU" in d.upper() for d in devices) and \
      tf.config.list_physical_devices("GPU"):
    line += " (GPUs are visible but unused: set --num_gpus)"
  return line


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's files (False only on the non-chief
  workers of a multi-worker run)."""
  return bool(strategy.extended.should_checkpoint)


def task_id(strategy: tf.distribute.Strategy) -> int:
  """This worker's index in TF_CONFIG's cluster (0 outside a multi-worker run)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  index = getattr(resolver, "task_id", None) if resolver is not None else None
  return int(index or 0)
