r"""Writes the golden fixture of Mask2Former's masked-attention transformer decoder.

Run in a separate virtualenv that has the reference (never a dependency of the
package or of its tests):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.25.0 numpy
    /tmp/refvenv/bin/python tools/golden/hf_mask2former_transformer_decoder_golden.py \
      --transformers_version=5.25.0 --output_dir=tests/fixtures/hf_mask2former

It builds Hugging Face transformers' ``Mask2FormerTransformerModule`` (the
transformer decoder of ``Mask2FormerForUniversalSegmentation``, alone) and the
model's ``class_predictor`` (a ``Linear(hidden_dim, num_labels + 1)``) with the
small configuration in ``CONFIG`` (``feature_size`` differs from ``hidden_dim``, so
the 1x1 input projections exist; ``decoder_layers=5``: 4 layers, so the cycle
over the 3 levels wraps around), gives every parameter a random value
(LayerNorm scales around 1), and runs it on random multi-scale features (the
pixel decoder's order, coarsest first, non-square) and mask features. One
channel of the mask features is a large constant, so that some queries' masks
are empty at some level (the fallback that lets them attend everywhere),
others full and others partial.

It writes ``transformer_decoder.npz`` to ``--output_dir``:

* ``weights/<name>``: every parameter under its state-dict name in
  ``Mask2FormerForUniversalSegmentation`` (``model.transformer_module.*``,
  ``class_predictor.*``);
* ``level0`` .. ``level2``: the multi-scale features ``[B, h, w, feature_size]``
  (NHWC; the module reads NCHW), coarsest first; ``mask_features``
  ``[B, H, W, mask_feature_size]``;
* ``class_logits`` ``[P, B, N, num_labels + 1]`` and ``mask_logits``
  ``[P, B, H, W, N]``: the P = ``decoder_layers`` predictions (before the first
  layer, then after each), the last being the model's output;

and ``transformer_decoder.json``: the transformers and torch versions, ``CONFIG``,
the two prefixes,
and for each layer the fraction of blocked attention positions and the number of
(image, query) rows whose mask was empty (so the fixture is seen to exercise the
fallback).

Every draw is seeded: the same versions give the same files.
"""

import argparse
import json
import os

import numpy as np
import torch

CONFIG = dict(hidden_dim=16, num_attention_heads=4, dim_feedforward=32, decoder_layers=5,
              num_queries=8, mask_feature_size=16, feature_size=24, num_labels=5,
              dropout=0.0, pre_norm=False, enforce_input_projection=False)
BATCH = 2
LEVEL_SIZES = [(2, 3), (4, 6), (8, 12)]
MASK_SIZE = (16, 24)
PREFIX = "model.transformer_module."
CLASS_PREFIX = "class_predictor."
# Makes some queries' masks empty or full at a level (see the module docstring).
CONSTANT_CHANNEL_VALUE = 3.0


def _randomise(module, seed):
  """Every parameter random; LayerNorm scales around 1."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in module.named_parameters():
      noise = torch.randn(param.shape, generator=generator) * 0.3
      param.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def _inputs():
  rng = np.random.default_rng(5)
  levels = [rng.normal(size=(BATCH, h, w, CONFIG["feature_size"])).astype(np.float32)
            for h, w in LEVEL_SIZES]
  mask = rng.normal(size=(BATCH,) + MASK_SIZE + (CONFIG["mask_feature_size"],))
  mask[..., 0] = CONSTANT_CHANNEL_VALUE
  return levels, mask.astype(np.float32)


def _nchw(x):
  return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _attention_stats(mask_logits):
  """Per layer: blocked fraction and empty-mask rows, as the reference makes them."""
  stats = []
  for layer in range(len(mask_logits) - 1):
    size = LEVEL_SIZES[layer % len(LEVEL_SIZES)]
    resized = torch.nn.functional.interpolate(mask_logits[layer], size=size, mode="bilinear",
                                              align_corners=False)
    blocked = (resized.sigmoid() < 0.5).flatten(2)
    stats.append({"level": size, "blocked_fraction": float(blocked.float().mean()),
                  "empty_rows": int(blocked.all(-1).sum()),
                  "full_rows": int((~blocked).all(-1).sum())})
  return stats


def write(output_dir, version):
  """The fixture (see the module docstring)."""
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers import Mask2FormerConfig  # pylint: disable=g-import-not-at-top
  from transformers.models.mask2former import modeling_mask2former as m2f  # pylint: disable=g-import-not-at-top
  if transformers.__version__ != version:
    raise SystemExit(f"--transformers_version={version} but "
                     f"transformers {transformers.__version__} is installed.")
  torch.manual_seed(0)
  config = Mask2FormerConfig(**CONFIG)
  module = m2f.Mask2FormerTransformerModule(in_features=config.feature_size,
                                            config=config).eval()
  class_predictor = torch.nn.Linear(config.hidden_dim, config.num_labels + 1).eval()
  _randomise(module, 1)
  _randomise(class_predictor, 2)
  levels, mask_features = _inputs()
  with torch.no_grad():
    out = module([_nchw(x) for x in levels], _nchw(mask_features), output_hidden_states=True)
    class_logits = [class_predictor(h.transpose(0, 1)) for h in out.intermediate_hidden_states]
  arrays = {f"level{i}": x for i, x in enumerate(levels)}
  arrays["mask_features"] = mask_features
  arrays["class_logits"] = torch.stack(class_logits).numpy().astype(np.float32)
  arrays["mask_logits"] = torch.stack(out.masks_queries_logits).permute(
      0, 1, 3, 4, 2).numpy().astype(np.float32)
  for name, value in module.state_dict().items():
    arrays[f"weights/{PREFIX}{name}"] = value.numpy()
  for name, value in class_predictor.state_dict().items():
    arrays[f"weights/{CLASS_PREFIX}{name}"] = value.numpy()
  os.makedirs(output_dir, exist_ok=True)
  np.savez_compressed(os.path.join(output_dir, "transformer_decoder.npz"), **arrays)
  metadata = {"transformers_version": transformers.__version__,
              "torch_version": torch.__version__,
              "reference_class": "Mask2FormerTransformerModule + class_predictor",
              "config": CONFIG, "prefix": PREFIX, "class_prefix": CLASS_PREFIX,
              "batch": BATCH, "level_sizes": LEVEL_SIZES,
              "mask_size": MASK_SIZE,
              "attention": _attention_stats(out.masks_queries_logits)}
  with open(os.path.join(output_dir, "transformer_decoder.json"), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
  print(json.dumps(metadata["attention"]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--transformers_version", required=True,
                      help="The transformers version that must be installed.")
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  write(args.output_dir, args.transformers_version)


if __name__ == "__main__":
  main()
