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
                   num_gpus: int = 0, num_cpu_devices: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy.

  Args:
    distribution_strategy: "off" (default strategy), "one_device", "mirrored",
      "multi_worker_mirrored" or "tpu".
    tpu: TPU name or address (``--tpu``); implies "tpu".
    num_gpus: GPUs for "mirrored" / "one_device".
    num_cpu_devices: > 0 splits the CPU into this many logical devices and, with
      "mirrored", puts one replica on each (testing multi-replica runs on CPU).
  """
  if tpu:
    distribution_strategy = "tpu"
  if num_cpu_devices > 0:
    split_cpu(num_cpu_devices)
    if distribution_strategy == "mirrored" and num_gpus == 0:
      devices = [d.name for d in tf.config.list_logical_devices("CPU")]
      return tf.distribute.MirroredStrategy(
          devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=distribution_strategy, num_gpus=num_gpus, tpu_address=tpu)
