"""Bookkeeping shared by the multi-head attention layers."""


def check_head_widths(owner: str, num_heads: int, **widths: int) -> None:
  """Checks that every width splits evenly over ``num_heads`` heads.

  Args:
    owner: the layer, for the message (e.g. "AxialAttention").
    num_heads: the number of heads.
    **widths: name -> total width (e.g. ``key_dim=128, value_dim=256``).

  Raises:
    ValueError: naming the owner, every width and the head count.
  """
  if num_heads < 1 or any(width % num_heads for width in widths.values()):
    listed = " and ".join(f"{name} {width}" for name, width in widths.items())
    raise ValueError(f"{owner}: {listed} must be divisible by num_heads {num_heads}.")
