"""Transformer feed-forward network (the position-wise MLP of every DETR-style layer)."""

import tensorflow as tf
import tf_keras as keras


class FeedForward(keras.layers.Layer):
  """Linear -> activation -> dropout -> linear -> dropout, on ``[..., dim]``."""

  def __init__(self, dim: int, hidden_dim: int, dropout: float, activation: str = "relu",
               **kwargs):
    super().__init__(**kwargs)
    self._fc1 = keras.layers.Dense(hidden_dim, activation=activation, name="fc1")
    self._fc2 = keras.layers.Dense(dim, name="fc2")
    self._drop1 = keras.layers.Dropout(dropout)
    self._drop2 = keras.layers.Dropout(dropout)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    return self._drop2(self._fc2(self._drop1(self._fc1(x), training=training)),
                       training=training)
