"""Distribution strategy from flags and gin."""

from typing import Optional

import gin
import tensorflow as tf
from official.common import distribute_utils


@gin.configurable
def build_strategy(distribution_strategy: str = "off", tpu: Optional[str] = None,
                   num_gpus: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy.

  Args:
    distribution_strategy: "off" (default strategy), "one_device", "mirrored",
      "multi_worker_mirrored" or "tpu".
    tpu: TPU name or address (``--tpu``); implies "tpu".
    num_gpus: GPUs for "mirrored" / "one_device".
  """
  if tpu:
    distribution_strategy = "tpu"
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=distribution_strategy, num_gpus=num_gpus, tpu_address=tpu)
