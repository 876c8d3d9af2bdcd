"""PVTv2 import: a PyTorch-layout state dict gives the outputs of a numpy PVTv2.

The reference below is PVTv2 written from the paper / released model in numpy,
NCHW and with PyTorch's weight layouts ([out, in] linears, [O, I, kh, kw]
convs), so every transpose of the import is checked by the outputs.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import erf

from deeplab_panoptic.modeling.pixel_encoders.pvtv2 import PVTv2Encoder
from deeplab_panoptic.tools import import_pvtv2

DIMS, HEADS, SR, MLP = (8, 16, 16, 32), (1, 2, 2, 4), (8, 4, 2, 1), (2, 2, 2, 2)


def _conv(x, w, b, stride, pad, groups=1):
  """x [C, H, W], w [O, C / groups, k, k] -> [O, H', W'] (PyTorch Conv2d)."""
  c, h, wd = x.shape
  o, _, k, _ = w.shape
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
  ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
  out = np.zeros([o, ho, wo])
  for u in range(k):
    for v in range(k):
      patch = x[:, u:u + stride * ho:stride, v:v + stride * wo:stride]  # [C, ho, wo]
      if groups == 1:
        out += np.einsum("oc,chw->ohw", w[:, :, u, v], patch)
      else:  # depthwise
        out += w[:, 0, u, v][:, None, None] * patch
  return out + b[:, None, None]


def _ln(x, g, b, eps):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * g + b


def _lin(x, state, name):
  return x @ state[name + ".weight"].T + state[name + ".bias"]


def _numpy_pvtv2(image, state):
  """image [H, W, 3] -> the four stage outputs [h, w, C] (eval mode)."""
  x = image.transpose(2, 0, 1).astype(np.float64)
  outs = []
  for s in range(4):
    p = f"patch_embed{s + 1}"
    k, stride = (7, 4) if s == 0 else (3, 2)
    x = _conv(x, state[p + ".proj.weight"], state[p + ".proj.bias"], stride, k // 2)
    c, h, w = x.shape
    t = _ln(x.reshape(c, -1).T, state[p + ".norm.weight"], state[p + ".norm.bias"], 1e-5)
    j = 0
    while f"block{s + 1}.{j}.norm1.weight" in state:
      b = f"block{s + 1}.{j}"
      y = _ln(t, state[b + ".norm1.weight"], state[b + ".norm1.bias"], 1e-6)
      heads, hd = HEADS[s], c // HEADS[s]
      q = _lin(y, state, b + ".attn.q").reshape(-1, heads, hd)
      if SR[s] > 1:
        r = _conv(y.T.reshape(c, h, w), state[b + ".attn.sr.weight"],
                  state[b + ".attn.sr.bias"], SR[s], 0)
        kv_in = _ln(r.reshape(c, -1).T, state[b + ".attn.norm.weight"],
                    state[b + ".attn.norm.bias"], 1e-5)
      else:
        kv_in = y
      kv = _lin(kv_in, state, b + ".attn.kv").reshape(-1, 2, heads, hd)
      logits = np.einsum("nhd,mhd->hnm", q, kv[:, 0]) * hd ** -0.5
      att = np.exp(logits - logits.max(-1, keepdims=True))
      att /= att.sum(-1, keepdims=True)
      o = np.einsum("hnm,mhd->nhd", att, kv[:, 1]).reshape(-1, c)
      t = t + _lin(o, state, b + ".attn.proj")
      y = _ln(t, state[b + ".norm2.weight"], state[b + ".norm2.bias"], 1e-6)
      hidden = _lin(y, state, b + ".mlp.fc1")
      hc = hidden.shape[-1]
      hidden = _conv(hidden.T.reshape(hc, h, w), state[b + ".mlp.dwconv.dwconv.weight"],
                     state[b + ".mlp.dwconv.dwconv.bias"], 1, 1, groups=hc)
      hidden = hidden.reshape(hc, -1).T
      hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
      t = t + _lin(hidden, state, b + ".mlp.fc2")
      j += 1
    t = _ln(t, state[f"norm{s + 1}.weight"], state[f"norm{s + 1}.bias"], 1e-6)
    outs.append(t.reshape(h, w, c))
    x = t.T.reshape(c, h, w)
  return outs


def _encoder():
  encoder = PVTv2Encoder(embed_dims=DIMS, depths=(1, 2, 1, 1), mlp_ratios=MLP,
                         num_heads=HEADS, sr_ratios=SR, drop_path_rate=0.0)
  encoder(tf.zeros([1, 64, 64, 3]))
  return encoder


def _random_state_dict(encoder, seed=0):
  """A state dict in PyTorch's layouts, with the shapes the encoder needs + a head."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, (variable, transform) in import_pvtv2.pvtv2_variable_map(encoder).items():
    keras_shape = tuple(variable.shape)
    # Invert the layout transform on the shape only: draw in PyTorch's layout.
    probe = np.zeros(keras_shape)
    if transform is import_pvtv2._LINEAR:
      shape = probe.T.shape
    elif transform is import_pvtv2._CONV:
      shape = np.transpose(probe, (3, 2, 0, 1)).shape
    elif transform is import_pvtv2._DEPTHWISE:
      shape = np.transpose(probe, (2, 3, 0, 1)).shape
    else:
      shape = keras_shape
    values = rng.normal(size=shape) * 0.2
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
      values = 1.0 + 5.0 * values  # LayerNorm scales around 1
    state[name] = values.astype(np.float32)
  state["head.weight"] = rng.normal(size=(10, DIMS[-1])).astype(np.float32)
  state["head.bias"] = np.zeros(10, np.float32)
  return state


def test_imported_encoder_equals_numpy_pvtv2():
  encoder = _encoder()
  state = _random_state_dict(encoder)
  unused = import_pvtv2.load_pvtv2_state_dict(encoder, state)
  assert unused == ["head.bias", "head.weight"]
  image = np.random.default_rng(1).uniform(-1, 1, size=(64, 64, 3)).astype(np.float32)
  ours = encoder(tf.constant(image[None]), training=False)
  reference = _numpy_pvtv2(image, {k: np.asarray(v, np.float64) for k, v in state.items()})
  for s, want in zip((4, 8, 16, 32), reference):
    got = ours[f"stride{s}"].numpy()[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_import_errors_name_what_is_wrong():
  encoder = _encoder()
  state = _random_state_dict(encoder)
  with pytest.raises(ValueError, match="lacks 1 arrays"):
    import_pvtv2.load_pvtv2_state_dict(
        encoder, {k: v for k, v in state.items() if k != "block1.0.attn.q.weight"})
  with pytest.raises(ValueError, match="no place in the encoder"):
    import_pvtv2.load_pvtv2_state_dict(encoder, dict(state, **{"block9.0.x.weight": 1}))
  bad = dict(state)
  bad["norm4.weight"] = np.ones(DIMS[-1] + 1, np.float32)
  with pytest.raises(ValueError, match="norm4.weight has shape"):
    import_pvtv2.load_pvtv2_state_dict(encoder, bad)
