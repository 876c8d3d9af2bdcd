r"""Imports Hugging Face or timm Swin weights (a safetensors file) into SwinEncoder.

    python -m deeplab_panoptic.tools.import_swin \
      --gin_file=RECIPE.gin [--gin_param='SwinEncoder.variant = "b"'] \
      --safetensors=model.safetensors [--prefix=swin.] [--naming=auto|hf|timm] \
      --output_dir=/tmp/swin_imported

reads the file with safetensors' numpy API (no torch), builds the recipe's model,
assigns its pixel encoder (which must be ``SwinEncoder``) and writes our
checkpoint (``ckpt-0``) for ``ExperimentConfig.init_checkpoint`` with
``init_checkpoint_parts = ['pixel_encoder']``.

The names are Hugging Face transformers' (``SwinModel`` / ``SwinBackbone``, as
``save_pretrained`` writes them and as the hub's files hold them), under
``--prefix``: ``""`` for a ``SwinBackbone`` or ``SwinModel`` file, ``swin.`` for
``SwinForImageClassification`` (the ImageNet checkpoints),
``model.pixel_level_module.encoder.`` for ``Mask2FormerForUniversalSegmentation``.
Arrays outside the prefix are not the encoder's and are ignored. timm's names
(``--naming=timm``, or found by ``auto`` from ``patch_embed.proj.weight``) are
read too: ``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1,norm2}``,
``attn.qkv`` (already fused, transposed), ``attn.relative_position_bias_table``,
``attn.proj``, ``mlp.fc1``, ``mlp.fc2``; patch merging ``layers.{i+1}.downsample``
(timm) or ``layers.{i}.downsample`` (Microsoft's and Mask2Former's original
layout, recognised by ``layers.0.downsample``); stage norms ``norm{i}``
(Mask2Former's backbone); classifier ``norm``, ``head``; buffers
``relative_position_index`` (checked) and ``attn_mask`` (not used).

| Hugging Face (under the prefix) | ours (``SwinEncoder``) | layout |
|---|---|---|
| ``embeddings.patch_embeddings.projection`` | ``patch_embed.proj`` | ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]`` |
| ``embeddings.norm`` | ``patch_embed.norm`` | |
| ``encoder.layers.{i}.blocks.{j}.layernorm_before`` / ``layernorm_after`` | ``stages[i][j].norm1`` / ``norm2`` | |
| ``...attention.self.{query,key,value}`` | ``...attn.qkv`` | each ``[C, C]`` transposed, concatenated on the output axis |
| ``...attention.self.relative_position_bias_table`` | ``...attn.relative_position_bias_table`` | |
| ``...attention.self.relative_position_index`` (older files) | checked equal to ``relative_position_index`` | |
| ``...attention.output.dense``, ``intermediate.dense``, ``output.dense`` | ``...attn.proj``, ``fc1``, ``fc2`` | ``[out, in]`` -> ``[in, out]`` |
| ``encoder.layers.{i}.downsample.norm`` / ``reduction`` | ``downsamples[i].norm`` / ``reduction`` | reduction transposed |
| ``hidden_states_norms.stage{i+1}`` (``SwinBackbone``) | ``norms[i]`` | |

An ImageNet classifier file has no per-stage norms: then the encoder's keep their
initialisation (ones and zeros, as Mask2Former's backbone starts from them) and
the report says so; a file with some but not all of them is an error. Every
other encoder variable must be found with its shape, and every array under the
prefix used except the classifier's (``layernorm.*``, ``classifier.*``, ``pooler.*``;
``swin.layernorm.*``, the final norm transformers 5's ``SwinBackbone`` saves unused);
anything else is a one-line error.
"""

from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_encoders.swin import SwinEncoder, relative_position_index

NAMINGS = ("auto", "hf", "timm")
# The classifier's arrays, which the encoder does not hold: the final norm (which
# transformers 5's SwinBackbone also holds, unused, as ``swin.layernorm``) and head.
CLASSIFIER_PREFIXES = {"hf": ("layernorm.", "swin.layernorm.", "classifier.", "pooler."),
                       "timm": ("norm.", "head.")}
# Buffers some files hold: the index is checked, timm's / Microsoft's masks are not used.
BUFFER_SUFFIXES = (".relative_position_index", ".attn_mask")

Combine = Callable[[List[np.ndarray]], np.ndarray]


def _same(arrays: List[np.ndarray]) -> np.ndarray:
  return arrays[0]


def _linear(arrays: List[np.ndarray]) -> np.ndarray:
  return arrays[0].T                                      # [out, in] -> [in, out]


def _conv(arrays: List[np.ndarray]) -> np.ndarray:
  return np.transpose(arrays[0], (2, 3, 1, 0))            # [O, I, kh, kw] -> [kh, kw, I, O]


def _fused_linear(arrays: List[np.ndarray]) -> np.ndarray:
  return np.concatenate([a.T if a.ndim == 2 else a for a in arrays], axis=-1)


class Entry:
  """One variable of ours, the file's names it is made of, and how."""

  def __init__(self, variable: tf.Variable, names: Sequence[str], combine: Combine = _same):
    self.variable, self.names, self.combine = variable, tuple(names), combine


def _norm(prefix: str, layer) -> List[Entry]:
  return [Entry(layer.gamma, [f"{prefix}.weight"]), Entry(layer.beta, [f"{prefix}.bias"])]


def _dense(prefix: str, layer) -> List[Entry]:
  entries = [Entry(layer.kernel, [f"{prefix}.weight"], _linear)]
  if layer.use_bias:
    entries.append(Entry(layer.bias, [f"{prefix}.bias"]))
  return entries


def _block(p: str, block) -> List[Entry]:
  """The entries of one ``SwinBlock`` under Hugging Face's ``...blocks.{j}`` name ``p``."""
  qkv = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
  return (_norm(f"{p}.layernorm_before", block.norm1)
          + [Entry(block.attn.qkv.kernel, [f"{n}.weight" for n in qkv], _fused_linear),
             Entry(block.attn.qkv.bias, [f"{n}.bias" for n in qkv], _fused_linear),
             Entry(block.attn.relative_position_bias_table,
                   [f"{p}.attention.self.relative_position_bias_table"])]
          + _dense(f"{p}.attention.output.dense", block.attn.proj)
          + _norm(f"{p}.layernorm_after", block.norm2)
          + _dense(f"{p}.intermediate.dense", block.fc1)
          + _dense(f"{p}.output.dense", block.fc2))


def _hf_entries(encoder: SwinEncoder) -> Tuple[List[Entry], List[Entry]]:
  """``(entries, stage-norm entries)`` of a built encoder, Hugging Face names."""
  embed = encoder.patch_embed
  entries = [Entry(embed.proj.kernel, ["embeddings.patch_embeddings.projection.weight"],
                   _conv),
             Entry(embed.proj.bias, ["embeddings.patch_embeddings.projection.bias"])]
  entries += _norm("embeddings.norm", embed.norm)
  for i, blocks in enumerate(encoder.stages):
    for j, block in enumerate(blocks):
      entries += _block(f"encoder.layers.{i}.blocks.{j}", block)
    if i < len(encoder.downsamples):
      merge = encoder.downsamples[i]
      entries += _norm(f"encoder.layers.{i}.downsample.norm", merge.norm)
      entries += _dense(f"encoder.layers.{i}.downsample.reduction", merge.reduction)
  stage_norms = []
  for i, norm in enumerate(encoder.norms):
    stage_norms += _norm(f"hidden_states_norms.stage{i + 1}", norm)
  return entries, stage_norms


def _timm_entries(encoder: SwinEncoder,
                  merge_ends_stage: bool) -> Tuple[List[Entry], List[Entry]]:
  """``(entries, stage-norm entries)``, timm's names.

  Args:
    merge_ends_stage: Microsoft's / Mask2Former's layout (patch merging
      ``layers.{i}.downsample`` at the end of stage i) instead of timm's
      (``layers.{i+1}.downsample``, at the start of the next stage).
  """
  embed = encoder.patch_embed
  entries = (_dense_conv("patch_embed.proj", embed.proj) + _norm("patch_embed.norm", embed.norm))
  for i, blocks in enumerate(encoder.stages):
    for j, block in enumerate(blocks):
      p = f"layers.{i}.blocks.{j}"
      entries += (_norm(f"{p}.norm1", block.norm1) + _dense(f"{p}.attn.qkv", block.attn.qkv)
                  + [Entry(block.attn.relative_position_bias_table,
                           [f"{p}.attn.relative_position_bias_table"])]
                  + _dense(f"{p}.attn.proj", block.attn.proj) + _norm(f"{p}.norm2", block.norm2)
                  + _dense(f"{p}.mlp.fc1", block.fc1) + _dense(f"{p}.mlp.fc2", block.fc2))
    if i < len(encoder.downsamples):
      p = f"layers.{i if merge_ends_stage else i + 1}.downsample"
      entries += (_norm(f"{p}.norm", encoder.downsamples[i].norm)
                  + _dense(f"{p}.reduction", encoder.downsamples[i].reduction))
  stage_norms = []
  for i, norm in enumerate(encoder.norms):
    stage_norms += _norm(f"norm{i}", norm)   # Mask2Former's backbone
  return entries, stage_norms


def _dense_conv(prefix: str, layer) -> List[Entry]:
  return [Entry(layer.kernel, [f"{prefix}.weight"], _conv),
          Entry(layer.bias, [f"{prefix}.bias"])]


def detect_naming(state: Mapping[str, np.ndarray]) -> str:
  """"hf" or "timm", from the patch embedding's name; raises when neither is there."""
  if "embeddings.patch_embeddings.projection.weight" in state:
    return "hf"
  if "patch_embed.proj.weight" in state:
    return "timm"
  raise ValueError("Swin import: neither 'embeddings.patch_embeddings.projection.weight' "
                   "(Hugging Face) nor 'patch_embed.proj.weight' (timm) is in the file, "
                   f"whose names look like {sorted(state)[:2]} (--prefix?).")


def swin_entries(encoder: SwinEncoder, state: Mapping[str, np.ndarray],
                 naming: str = "auto") -> Tuple[str, List[Entry], List[Entry]]:
  """``(naming, entries, stage-norm entries)`` of a built encoder for ``state``'s names."""
  if naming not in NAMINGS:
    raise ValueError(f"Swin import: naming must be one of {NAMINGS}, got {naming!r}.")
  if naming == "auto":
    naming = detect_naming(state)
  if naming == "hf":
    return (naming,) + _hf_entries(encoder)
  merge_ends_stage = "layers.0.downsample.reduction.weight" in state
  return (naming,) + _timm_entries(encoder, merge_ends_stage)


def _check_names(entries: List[Entry], stage_norms: List[Entry],
                 state: Mapping[str, np.ndarray], classifier: Tuple[str, ...]) -> List[Entry]:
  """The entries to assign; raises on a missing or unplaced array."""
  has_norms = [all(n in state for n in e.names) for e in stage_norms]
  if any(has_norms) and not all(has_norms):
    missing = [e.names[0] for e, ok in zip(stage_norms, has_norms) if not ok]
    raise ValueError(f"Swin import: the file has per-stage norms but lacks {missing}.")
  if all(has_norms):
    entries = entries + stage_norms
  needed = {n for e in entries for n in e.names}
  missing = sorted(needed - set(state))
  if missing:
    raise ValueError(f"Swin import: the file lacks {len(missing)} arrays the encoder "
                     f"needs, e.g. {missing[:3]} (another variant, or --prefix?).")
  unplaced = sorted(n for n in set(state) - needed
                    if not n.endswith(BUFFER_SUFFIXES) and not n.startswith(classifier))
  if unplaced:
    raise ValueError(f"Swin import: {len(unplaced)} arrays of the file have no place in "
                     f"the encoder, e.g. {unplaced[:3]} (another variant?).")
  return entries


def _check_position_indices(encoder: SwinEncoder, state: Mapping[str, np.ndarray]) -> None:
  """The file's stored ``relative_position_index`` buffers (older files) must be ours."""
  window = encoder.stages[0][0].attn._window  # pylint: disable=protected-access
  ours = relative_position_index(window)
  for name in sorted(n for n in state if n.endswith(".relative_position_index")):
    stored = np.asarray(state[name])
    if stored.size != ours.size or not np.array_equal(stored.reshape(ours.shape), ours):
      raise ValueError(f"Swin import: {name} is not the relative position index of "
                       f"window {window} (another window size?).")


def strip_prefix(arrays: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
  """The arrays named ``<prefix><name>``, keyed by ``name``; raises when there are none."""
  state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
  if not state:
    example = sorted(arrays)[:2]
    raise ValueError(f"Swin import: no array name starts with --prefix={prefix!r}; the "
                     f"file's names look like {example}.")
  return state


def load_swin_state(encoder: SwinEncoder, state: Mapping[str, np.ndarray],
                    naming: str = "auto") -> Dict[str, int]:
  """Assigns every variable of a built ``encoder`` from Hugging Face- or timm-named arrays.

  Args:
    encoder: a built ``SwinEncoder``.
    state: name (without prefix) -> array, e.g. ``strip_prefix(load_file(f), p)``.
    naming: "hf", "timm", or "auto" (from the patch embedding's name).

  Returns:
    ``{"assigned": variables assigned, "stage_norms_kept": stage-norm variables left
    at their initialisation, "classifier_arrays": arrays of the classifier not used}``.

  Raises:
    ValueError: one line naming the missing, unplaced or misshapen array.
  """
  naming, entries, stage_norms = swin_entries(encoder, state, naming)
  if len(entries) + len(stage_norms) != len(encoder.weights):
    raise ValueError(f"Swin import: {len(encoder.weights)} encoder variables but "
                     f"{len(entries) + len(stage_norms)} mapped; the encoder's layout changed.")
  classifier = CLASSIFIER_PREFIXES[naming]
  selected = _check_names(entries, stage_norms, state, classifier)
  _check_position_indices(encoder, state)
  for entry in selected:
    value = entry.combine([np.asarray(state[n]) for n in entry.names])
    if tuple(value.shape) != tuple(entry.variable.shape):
      shapes = [tuple(np.shape(state[n])) for n in entry.names]
      raise ValueError(f"Swin import: {entry.names[0]} {shapes[0]} does not fit "
                       f"{entry.variable.name} {tuple(entry.variable.shape)}.")
    entry.variable.assign(value.astype(entry.variable.dtype.as_numpy_dtype))
  return {"assigned": len(selected),
          "stage_norms_kept": len(entries) + len(stage_norms) - len(selected),
          "classifier_arrays": sum(n.startswith(classifier) for n in state)}


def read_safetensors(path: str, prefix: str) -> Dict[str, np.ndarray]:
  """The arrays of a safetensors file under ``prefix`` (see ``strip_prefix``)."""
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    arrays = load_file(path)
  except (OSError, ValueError, SafetensorError) as e:
    raise ValueError(f"cannot read --safetensors={path}: {e}") from e
  return strip_prefix(arrays, prefix)


def main(argv):
  del argv
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  from deeplab_panoptic.tools.import_deeplab2 import build_model_from_flags, write_imported_checkpoint  # pylint: disable=g-import-not-at-top,g-multiple-import
  f = flags.FLAGS
  if not tf.io.gfile.exists(f.safetensors):
    raise app.UsageError(f"--safetensors={f.safetensors}: no such file.")
  model = build_model_from_flags("a recipe whose pixel encoder is SwinEncoder")
  if not isinstance(model.pixel_encoder, SwinEncoder):
    raise app.UsageError(f"the recipe's pixel encoder is {type(model.pixel_encoder).__name__},"
                         " not SwinEncoder.")
  try:
    report = load_swin_state(model.pixel_encoder, read_safetensors(f.safetensors, f.prefix),
                             f.naming)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(f"assigned {report['assigned']} encoder variables; kept "
        f"{report['stage_norms_kept']} stage-norm variables at their initialisation; "
        f"left out {report['classifier_arrays']} classifier arrays")
  print("wrote", write_imported_checkpoint(model, f.output_dir))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  import deeplab_panoptic.main  # pylint: disable=g-import-not-at-top,unused-import
  flags.DEFINE_string("safetensors", None, "Hugging Face Swin weights (.safetensors).")
  flags.DEFINE_string("prefix", "", "Prefix of the encoder's names in the file, e.g. "
                      "'swin.' or 'model.pixel_level_module.encoder.'.")
  flags.DEFINE_enum("naming", "auto", NAMINGS, "The file's names: Hugging Face's, timm's, "
                    "or auto (from the patch embedding's name).")
  flags.DEFINE_string("output_dir", None, "Where our checkpoint (ckpt-0) is written.")
  flags.mark_flags_as_required(["safetensors", "output_dir"])
  app.run(main)
