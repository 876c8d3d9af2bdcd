r"""Writes the golden fixture of the Swin pixel encoder and its importer.

Run in a separate virtualenv that has the reference (never a dependency of the
package or of its tests):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.25.0 safetensors numpy
    /tmp/refvenv/bin/python tools/golden/swin_golden.py \
      --transformers_version=5.25.0 --output_dir=tests/fixtures/swin
    python3 -m venv /tmp/refvenv_timm
    /tmp/refvenv_timm/bin/pip install timm==1.0.31 safetensors numpy
    /tmp/refvenv_timm/bin/python tools/golden/swin_golden.py \
      --timm_version=1.0.31 --output_dir=tests/fixtures/swin

(timm needs a torchvision that matches its torch, hence its own virtualenv).

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

With ``--timm_version``, ``timm/`` gets the same for timm's ``SwinTransformer``
(``TIMM_CONFIG``, a 10-class head, ``always_partition=True`` so that every
stage shifts as Mask2Former's does): ``model.safetensors`` (its state dict, timm's
names), ``golden.npz`` (``image``, and ``stage1`` ... ``stage4`` from
``forward_intermediates``: the stage outputs, which timm does not normalise) and
``metadata.json``. Its 64 x 64 input (window 2) needs no padding at any stage: timm
shifts before padding to whole windows where the reference pads first, so the
two differ only on maps that are no multiple of the window.

Every draw is seeded: the same versions give the same files.
"""

import argparse
import json
import os

import numpy as np
import torch

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
TIMM_CONFIG = dict(img_size=64, patch_size=4, embed_dim=4, depths=(1, 2, 1, 1),
                   num_heads=(1, 1, 2, 2), window_size=2, num_classes=10,
                   always_partition=True, drop_path_rate=0.0)


def _randomise(model, seed):
  """Every parameter random; LayerNorm scales around 1."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator) * 0.2
      param.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def write_timm(output_dir, timm_version):
  """The timm fixture (see the module docstring)."""
  import timm  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  if timm.__version__ != timm_version:
    raise SystemExit(f"--timm_version={timm_version} but timm {timm.__version__} is installed.")
  from timm.models.swin_transformer import SwinTransformer  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = SwinTransformer(**TIMM_CONFIG).eval()
  _randomise(model, 3)
  size = TIMM_CONFIG["img_size"]
  image = np.random.default_rng(4).uniform(-1, 1, size=(1, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    stages = model.forward_intermediates(torch.from_numpy(image).permute(0, 3, 1, 2),
                                         intermediates_only=True)
  arrays = {"image": image}
  for stage, feature in zip(STAGES, stages):
    arrays[stage] = feature.permute(0, 2, 3, 1).numpy().astype(np.float32)
  os.makedirs(output_dir, exist_ok=True)
  save_file({k: v.contiguous() for k, v in model.state_dict().items()},
            os.path.join(output_dir, "model.safetensors"))
  np.savez_compressed(os.path.join(output_dir, "golden.npz"), **arrays)
  metadata = {"timm_version": timm.__version__, "torch_version": torch.__version__,
              "reference_class": "timm.models.swin_transformer.SwinTransformer",
              "config": TIMM_CONFIG}
  with open(os.path.join(output_dir, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)


def reference_params() -> dict:
  """``{"<variant>_w<window>": parameter count}`` of the reference's SwinBackbone."""
  from transformers import SwinBackbone, SwinConfig  # pylint: disable=g-import-not-at-top
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
  parser.add_argument("--transformers_version", default=None,
                      help="The transformers version that must be installed; writes the "
                      "transformers fixture.")
  parser.add_argument("--timm_version", default=None,
                      help="The timm version that must be installed; writes timm/.")
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  if not (args.transformers_version or args.timm_version):
    raise SystemExit("give --transformers_version, --timm_version or both.")
  if args.transformers_version:
    write_transformers(args.output_dir, args.transformers_version)
  if args.timm_version:
    write_timm(os.path.join(args.output_dir, "timm"), args.timm_version)


def write_transformers(output_dir, version):
  """The transformers fixture (see the module docstring)."""
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers import SwinBackbone, SwinConfig  # pylint: disable=g-import-not-at-top
  if transformers.__version__ != version:
    raise SystemExit(f"--transformers_version={version} but "
                     f"transformers {transformers.__version__} is installed.")
  torch.manual_seed(0)
  model = SwinBackbone(SwinConfig(**CONFIG)).eval()
  _randomise(model, 1)
  image = np.random.default_rng(2).uniform(-1, 1, size=(1,) + IMAGE_SIZE + (3,))
  image = image.astype(np.float32)
  with torch.no_grad():
    out = model(torch.from_numpy(image).permute(0, 3, 1, 2).contiguous())
  arrays = {"image": image}
  for stage, feature in zip(STAGES, out.feature_maps):
    arrays[stage] = feature.permute(0, 2, 3, 1).numpy().astype(np.float32)
  os.makedirs(output_dir, exist_ok=True)
  model.save_pretrained(output_dir)
  np.savez_compressed(os.path.join(output_dir, "golden.npz"), **arrays)
  metadata = {"transformers_version": transformers.__version__,
              "torch_version": torch.__version__, "reference_class": "SwinBackbone",
              "config": CONFIG, "image_size": list(IMAGE_SIZE),
              "reference_params": reference_params()}
  with open(os.path.join(output_dir, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
  print({k: v.shape for k, v in arrays.items()}, metadata["reference_params"])


if __name__ == "__main__":
  main()
