"""Recomputation of a part's activations in the backward pass (tf.recompute_grad).

Shared by the meta-architectures (``MaskTransformer.recompute``,
``SemanticSegmenter.recompute``): the forward pass keeps no activations of the
part, and the backward pass runs it again with the same random draws and without
updating batch-norm moving statistics a second time.
"""

import contextlib
from typing import List

import tensorflow as tf
import tf_keras as keras


@contextlib.contextmanager
def _frozen_moving_statistics(layer: keras.layers.Layer):
  """Batch norms under ``layer`` compute batch statistics but do not update their
  moving averages (used while recomputing a forward pass that already did)."""
  norms = [m for m in layer.submodules if isinstance(m, keras.layers.BatchNormalization)]
  if isinstance(layer, keras.layers.BatchNormalization):
    norms.append(layer)
  keep = lambda variable, *args, **kwargs: tf.identity(variable)
  for norm in norms:
    # Instance attributes shadow the methods Keras calls for the moving-average
    # assignments (the plain and the fused-update paths).
    norm._assign_moving_average = keep  # pylint: disable=protected-access
    norm._assign_new_value = keep  # pylint: disable=protected-access
  try:
    yield
  finally:
    for norm in norms:
      del norm._assign_moving_average  # pylint: disable=protected-access
      del norm._assign_new_value  # pylint: disable=protected-access


def _random_generators(part: keras.layers.Layer) -> List[tf.random.Generator]:
  """The stateful generators of the random layers under ``part``.

  Raises:
    ValueError: a random layer under ``part`` draws from TensorFlow's global
      (legacy) random ops, whose draws cannot be replayed in the recomputation.
  """
  generators = []
  for layer in [part] + list(part.submodules):
    keras_generator = getattr(layer, "_random_generator", None)
    if keras_generator is None:
      continue
    rate = getattr(layer, "drop_rate", getattr(layer, "rate", 0.0))
    generator = getattr(keras_generator, "_generator", None)
    if isinstance(generator, tf.random.Generator):
      generators.append(generator)
    elif rate and getattr(layer, "built", False):
      raise ValueError(
          f"recompute: layer {layer.name!r} draws random masks from "
          "global random ops, which the recomputation cannot replay; set "
          "ExperimentConfig.seed (stateful generators) or drop its rate to 0.")
  return generators


def recompute_call(part: keras.layers.Layer, inputs: tuple, training):
  """``part(*inputs, training)`` whose activations are recomputed in the backward pass.

  ``inputs`` (the positional arguments) and the outputs may be nested (dicts of
  endpoints, lists of auxiliary predictions): tf.recompute_grad sees flat tensors. Python runs the wrapped
  function once for the forward pass and once more when the gradient is built;
  the second run must not update batch-norm moving statistics again.
  """
  flat_inputs = tf.nest.flatten(inputs)
  calls = []
  structure = []
  generators = _random_generators(part)
  saved_states = []

  def forward(*flat):
    nested = tf.nest.pack_sequence_as(inputs, list(flat))
    recomputing = bool(calls)
    calls.append(1)
    if not recomputing:
      # Random layers (drop path, dropout) must draw the same masks again when
      # the pass is recomputed: their generators' states are replayed.
      saved_states[:] = [g.state.read_value() for g in generators]
      outputs = part(*nested, training=training)
    else:
      after = [g.state.read_value() for g in generators]
      with tf.control_dependencies(after):
        for g, state in zip(generators, saved_states):
          g.state.assign(state)
      with _frozen_moving_statistics(part):
        outputs = part(*nested, training=training)
      for g, state in zip(generators, after):
        g.state.assign(state)
    if not structure:
      structure.append(outputs)
    return tf.nest.flatten(outputs)

  flat_outputs = tf.recompute_grad(forward)(*flat_inputs)
  return tf.nest.pack_sequence_as(structure[0], list(flat_outputs))
