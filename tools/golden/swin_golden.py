r"""Writes the golden fixture of the Swin pixel encoder and its importer.

Run in a separate virtualenv that has the reference (never a dependency of the
package or of its tests):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.25.0 safetensors numpy
    /tmp/refvenv/bin/python tools/golden/swin_golden.py \
      --transformers_version=5.25.0 --output_dir=tests/fixtures/swin

It builds Hugging Face transformers' ``SwinBackbone`` (the class Mask2Former's
transformers port loads through ``load_backbone``: shifted windows at every
resolution, features taken before each patch merging, one LayerNorm per output
stage) with the small configuration in ``CONFIG``, gives every parameter a random
value (relative-position tables and LayerNorms included, which transformers
initialises to zeros / ones, so that no mapping error hides behind a default),
and writes to ``--output_dir``:

* ``config.json`` and ``model.safetensors``: ``save_pretrained``'s folder (the
  names the hub's Swin and Mask2Former checkpoints use);
* ``golden.npz``: ``image`` ``[1, H, W, 3]`` float32 (NHWC; the model reads NCHW)
  and ``stage1`` ... ``stage4``: ``feature_maps``, ``[1, h, w, c]`` float32 (NHWC);
* ``metadata.json``: the transformers and torch versions, ``CONFIG``, the input
  size, and ``reference_params``: the parameter count of the reference's
  ``SwinBackbone`` for Swin-T/S/B/L (window 7, and B/L with window 12), without
  its final ``swin.layernorm``, which ``SwinBackbone`` holds but never runs.

The image size (58 x 75) is no multiple of the patch size, its stage-1 grid
(15 x 19) no multiple of the window and odd, so the patch, window and
patch-merging paddings are all exercised; every stage has a shifted block.
Every draw is seeded: the same versions give the same files.
"""

import argparse
import json
import os

import numpy as np
import torch
import transformers
from transformers import SwinBackbone, SwinConfig

CONFIG = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4,
              mlp_ratio=4.0, qkv_bias=True, hidden_act="gelu", layer_norm_eps=1e-5,
              drop_path_rate=0.0, image_size=64, patch_size=4,
              out_features=["stage1", "stage2", "stage3", "stage4"])
IMAGE_SIZE = (58, 75)
# Swin-T/S/B/L (Liu et al., arXiv 2103.14030, Sec. 3.3).
VARIANTS = {
    "t": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "s": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "b": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
    "l": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48]),
}
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def reference_params() -> dict:
  """``{"<variant>_w<window>": parameter count}`` of the reference's SwinBackbone."""
  counts = {}
  for name, spec in VARIANTS.items():
    for window in ((7, 12) if name in ("b", "l") else (7,)):
      model = SwinBackbone(SwinConfig(window_size=window, out_features=STAGES, **spec))
      counts[f"{name}_w{window}"] = sum(
          p.numel() for n, p in model.named_parameters() if not n.startswith("swin.layernorm."))
      del model
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--transformers_version", required=True,
                      help="The transformers version that must be installed.")
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  if transformers.__version__ != args.transformers_version:
    raise SystemExit(f"--transformers_version={args.transformers_version} but "
                     f"transformers {transformers.__version__} is installed.")
  torch.manual_seed(0)
  model = SwinBackbone(SwinConfig(**CONFIG)).eval()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator) * 0.2
      param.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)
  image = np.random.default_rng(2).uniform(-1, 1, size=(1,) + IMAGE_SIZE + (3,))
  image = image.astype(np.float32)
  with torch.no_grad():
    out = model(torch.from_numpy(image).permute(0, 3, 1, 2).contiguous())
  arrays = {"image": image}
  for stage, feature in zip(STAGES, out.feature_maps):
    arrays[stage] = feature.permute(0, 2, 3, 1).numpy().astype(np.float32)
  os.makedirs(args.output_dir, exist_ok=True)
  model.save_pretrained(args.output_dir)
  np.savez_compressed(os.path.join(args.output_dir, "golden.npz"), **arrays)
  metadata = {"transformers_version": transformers.__version__,
              "torch_version": torch.__version__, "reference_class": "SwinBackbone",
              "config": CONFIG, "image_size": list(IMAGE_SIZE),
              "reference_params": reference_params()}
  with open(os.path.join(args.output_dir, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
  print({k: v.shape for k, v in arrays.items()}, metadata["reference_params"])


if __name__ == "__main__":
  main()
