"""The exponential moving average (EMA) of the weights, swapped in for evaluation and export.

With ``make_optimizer.use_ema = True`` each tf_keras optimizer of the
``OptimizerGroup`` updates, after every step, one average per trainable variable::

  average = ema_momentum * average + (1 - ema_momentum) * weight

(tf_keras ``Optimizer._update_model_variables_moving_average``). Evaluation,
export and everything served from an export use those averages; training
continues from the raw weights. Non-trainable variables (batch-norm moving
statistics) are used as they are: the optimizers keep no average of them.

``EmaWeights`` pairs the model's trainable variables (model order) with their
averages and is saved in the checkpoint as ``ema``:

- in training the averages are the optimizers' own variables (the checkpoint
  writes each variable once, reachable from both ``optimizer`` and ``ema``), so
  an exact resume restores them with the optimizer;
- in eval, continuous_eval and export the averages are fresh variables that the
  checkpoint's ``ema`` entry fills, without building any optimizer.

``ready`` is 1 once the averages follow this run's weights: a run that starts
(or warm-starts from ``init_checkpoint``, or resumes a checkpoint written without
EMA) copies the weights into the averages first, and evaluating a checkpoint
whose ``ready`` is not 1 is an error rather than a silent use of
initial values.
"""

import contextlib
from typing import Iterator, List, Sequence

import tensorflow as tf

# The checkpoint item name (experiment.py) of the averages.
CHECKPOINT_KEY = "ema"


class EmaError(ValueError):
  """The checkpoint holds no EMA of the weights that evaluation could use."""


class EmaWeights(tf.Module):
  """The trainable variables of a model and their moving averages, swapped in place.

  Args:
    model_variables: the model's trainable variables.
    averages: one variable per model variable, same shape and dtype, same order.
  """

  def __init__(self, model_variables: Sequence[tf.Variable],
               averages: Sequence[tf.Variable]):
    super().__init__(name="ema_weights")
    if len(model_variables) != len(averages):
      raise ValueError(f"EmaWeights: {len(model_variables)} variables but "
                       f"{len(averages)} averages.")
    # A function keeps the model's variables out of this module's checkpoint
    # dependencies: the checkpoint saves them under "model".
    variables = list(model_variables)
    self._model_variables = lambda: variables
    self.averages = list(averages)
    # NONE: every replica (and worker) holds the same flag; set only on the host.
    self.ready = tf.Variable(0, dtype=tf.int64, trainable=False, name="ready",
                             aggregation=tf.VariableAggregation.NONE)

  @classmethod
  def for_restore(cls, model_variables: Sequence[tf.Variable]) -> "EmaWeights":
    """Empty averages for a checkpoint's ``ema`` entry to fill (build in the strategy's scope)."""
    averages = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                            name=v.name.split(":")[0] + "/average")
                for v in model_variables]
    return cls(model_variables, averages)

  @property
  def model_variables(self) -> List[tf.Variable]:
    return self._model_variables()

  def start_from_weights(self) -> bool:
    """Copies the weights into the averages unless they already follow this run.

    Call after any restore or warm start, before training. Returns whether it copied.
    """
    if int(self.ready.numpy()) == 1:
      return False
    for variable, average in zip(self.model_variables, self.averages):
      average.assign(variable.read_value())
    self.ready.assign(1)
    return True

  def check_ready(self, where: str) -> None:
    """Raises EmaError when the restored checkpoint held no EMA of the weights."""
    if int(self.ready.numpy()) != 1:
      raise EmaError(f"{where}: make_optimizer.use_ema is on but the checkpoint holds no "
                     "EMA of the weights (trained without it?); set "
                     "make_optimizer.use_ema=False to use the raw weights.")

  def swap(self) -> None:
    """Exchanges weights and averages in place, on every replica.

    Runs in the cross-replica context: a distributed variable's assignment there
    writes every replica's copy (all copies hold the same value). One variable
    at a time, so no second copy of the model is ever held.
    """
    for variable, average in zip(self.model_variables, self.averages):
      value = tf.identity(variable.read_value())
      variable.assign(average.read_value())
      average.assign(value)

  @contextlib.contextmanager
  def swapped(self) -> Iterator[None]:
    """The averages in the model for the block; the raw weights back afterwards,
    also when the block raises."""
    self.swap()
    try:
      yield
    finally:
      self.swap()
