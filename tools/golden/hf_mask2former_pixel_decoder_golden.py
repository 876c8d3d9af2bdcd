r"""Writes the golden fixture of Mask2Former's pixel decoder and its weight mapping.

Run in a separate virtualenv that has the reference (never a dependency of the
package or of its tests):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.25.0 numpy
    /tmp/refvenv/bin/python tools/golden/hf_mask2former_pixel_decoder_golden.py \
      --transformers_version=5.25.0 --output_dir=tests/fixtures/hf_mask2former

It builds Hugging Face transformers' ``Mask2FormerPixelDecoder`` alone (the module
``Mask2FormerForUniversalSegmentation`` holds as
``model.pixel_level_module.decoder``) with the small configuration in ``CONFIG``,
gives every parameter a random value (GroupNorm and LayerNorm scales around 1, the
level embedding included, so that no mapping error hides behind an
initialisation), runs it in eval mode on random backbone features and writes to
``--output_dir``:

* ``pixel_decoder.npz``: ``weights/<name>``: the decoder's state dict under its
  full name in a ``Mask2FormerForUniversalSegmentation`` file
  (``model.pixel_level_module.decoder.<name>``, torch layout);
  ``input/stride<s>``: the backbone features ``[1, h, w, c]`` (NHWC; the module
  reads NCHW); ``output/stride<s>``: its ``multi_scale_features`` (strides 32, 16,
  8) and ``mask_features`` (stride 4), NHWC, float32.
* ``pixel_decoder.json``: the transformers and torch versions, ``CONFIG``, the
  backbone feature shapes, and ``reference_params``: the parameter count of the
  full-size module (``Mask2FormerConfig()``'s defaults: 256 wide, 6 layers, 8 heads,
  FFN 1024, 256-d mask features) on the backbone widths of ``BACKBONE_WIDTHS``.

The feature maps are no 2x pyramid (17 x 23, 9 x 12, 5 x 6, 3 x 3) and not
square, so the bilinear upsampling of the stride-4 step (a non-integer factor),
the reference points and the sine encodings see unequal heights and widths.
Every draw is seeded: the same versions give the same files.
"""

import argparse
import json
import os

import numpy as np
import torch

PREFIX = "model.pixel_level_module.decoder."
CONFIG = dict(feature_size=32, mask_feature_size=16, encoder_layers=2, num_attention_heads=4,
              encoder_feedforward_dim=48, common_stride=4, feature_strides=[4, 8, 16, 32],
              dropout=0.0)
# Backbone endpoints, fine to coarse: stride, (height, width), channels.
FEATURES = [(4, (17, 23), 8), (8, (9, 12), 12), (16, (5, 6), 16), (32, (3, 3), 24)]
# Backbone output widths (strides 4-32) of the published Mask2Former backbones.
BACKBONE_WIDTHS = {"resnet": [256, 512, 1024, 2048], "swin_t_s": [96, 192, 384, 768],
                   "swin_b": [128, 256, 512, 1024], "swin_l": [192, 384, 768, 1536]}


def _randomise(model, seed):
  """Every parameter random; normalisation scales around 1."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      is_scale = param.ndim == 1 and name.endswith("weight") and (
          "norm" in name or name.split(".")[-2] == "1")   # Sequential(conv, GroupNorm)
      param.copy_(1.0 + 0.2 * noise if is_scale else 0.3 * noise)


def reference_params() -> dict:
  """``{backbone: parameter count}`` of the full-size pixel decoder."""
  from transformers import Mask2FormerConfig  # pylint: disable=g-import-not-at-top
  from transformers.models.mask2former.modeling_mask2former import (  # pylint: disable=g-import-not-at-top
      Mask2FormerPixelDecoder)
  counts = {}
  for name, widths in BACKBONE_WIDTHS.items():
    with torch.device("meta"):
      module = Mask2FormerPixelDecoder(Mask2FormerConfig(), feature_channels=widths)
    counts[name] = sum(p.numel() for p in module.parameters())
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--transformers_version", required=True,
                      help="The transformers version that must be installed.")
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers import Mask2FormerConfig  # pylint: disable=g-import-not-at-top
  from transformers.models.mask2former.modeling_mask2former import (  # pylint: disable=g-import-not-at-top
      Mask2FormerPixelDecoder)
  if transformers.__version__ != args.transformers_version:
    raise SystemExit(f"--transformers_version={args.transformers_version} but "
                     f"transformers {transformers.__version__} is installed.")
  torch.manual_seed(0)
  decoder = Mask2FormerPixelDecoder(Mask2FormerConfig(**CONFIG),
                                    feature_channels=[c for _, _, c in FEATURES]).eval()
  _randomise(decoder, 1)
  rng = np.random.default_rng(2)
  inputs = {s: rng.normal(size=(1,) + hw + (c,)).astype(np.float32) for s, hw, c in FEATURES}
  with torch.no_grad():
    out = decoder([torch.from_numpy(inputs[s]).permute(0, 3, 1, 2).contiguous()
                   for s, _, _ in FEATURES])
  arrays = {f"weights/{PREFIX}{k}": v.numpy().astype(np.float32)
            for k, v in decoder.state_dict().items()}
  arrays.update({f"input/stride{s}": x for s, x in inputs.items()})
  for s, feature in zip((32, 16, 8), out.multi_scale_features):
    arrays[f"output/stride{s}"] = feature.permute(0, 2, 3, 1).numpy().astype(np.float32)
  arrays["output/stride4"] = out.mask_features.permute(0, 2, 3, 1).numpy().astype(np.float32)
  os.makedirs(args.output_dir, exist_ok=True)
  np.savez_compressed(os.path.join(args.output_dir, "pixel_decoder.npz"), **arrays)
  metadata = {"transformers_version": transformers.__version__,
              "torch_version": torch.__version__,
              "reference_class": "transformers.models.mask2former.modeling_mask2former."
                                 "Mask2FormerPixelDecoder",
              "prefix": PREFIX, "config": CONFIG,
              "features": [{"stride": s, "height": hw[0], "width": hw[1], "channels": c}
                           for s, hw, c in FEATURES],
              "reference_params": reference_params()}
  with open(os.path.join(args.output_dir, "pixel_decoder.json"), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
  print({k: v.shape for k, v in arrays.items() if not k.startswith("weights/")},
        metadata["reference_params"])


if __name__ == "__main__":
  main()
