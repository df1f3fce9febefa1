"""Import and export Hugging Face Qwen2.5-VL checkpoints (safetensors only, no torch).

    model, config = load_pretrained("/path/to/Lingshu-7B", dtype="bfloat16")
    model, config = load_pretrained("/path/to/ECHO_block8")   # a released ECHO directory
    save_pretrained(model, config, "/path/to/out")   # opens in transformers again

A checkpoint directory holds `config.json` and either `model.safetensors` or a
sharded `model.safetensors.index.json`. Both config layouts are read: the
transformers 5 one (`text_config` / `vision_config` nested, `rope_parameters`)
and the older flat one (text fields at the top, `rope_scaling`). Both tensor
name layouts are read too: "model.layers.*" / "visual.*" (what save_pretrained
writes) and "model.language_model.*" / "model.visual.*"; export writes the
former.

Weights only, never code: a `config.json` with `auto_map` or a custom
`model_type` (the released ECHO checkpoints ship their own modeling code for
`trust_remote_code=True`) is read as data when its fields describe the
Qwen2.5-VL layout; no file of the directory is imported or run. The
ECHO-specific fields are read too (`released_fields`): the mask token id,
resolved against the tokenizer files (`mask_id.py`), and the block length when
the config states one.

Refused, with a ValueError saying what to do: pickle checkpoints (.bin, .pt,
.pth, .ckpt: loading them can run arbitrary code), configs whose fields are not
Qwen2.5-VL's, mask ids that disagree between config and tokenizer, and
missing, unexpected or mis-shaped tensors (all of them named in one message).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors needs)
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from echo_jax.models import mask_id as mask_id_lib
from echo_jax.models.checkpoint_error import CheckpointError
from echo_jax.models.config import ModelConfig, TextConfig, TokenIds, VisionConfig
from echo_jax.models.decoder import Qwen2Decoder
from echo_jax.models.vision import vision_from_hf, vision_hf_shapes, vision_to_hf
from echo_jax.models.vlm import EchoVLM

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_VISION_PREFIX = "visual."
# Newer transformers name the submodules differently; map them onto the layout we write.
_NAME_ALIASES = (("model.language_model.", "model."), ("model.visual.", "visual."))
# Text and vision fields every Qwen2.5-VL config.json has, whatever its model_type says.
_TEXT_FIELDS = (
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
)
_VISION_FIELDS = ("depth", "hidden_size", "intermediate_size", "num_heads")
# Families whose tensors would not map even though some field names match.
_OTHER_ARCHITECTURES = ("qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava", "gemma3")
# Names a config.json may give the block length it was trained with (ECHO-style fields).
_BLOCK_LENGTH_KEYS = ("block_length", "block_size", "block_len", "bd_size")


# --- config ----------------------------------------------------------------------------------


def config_from_hf(
  hf: dict[str, Any],
  *,
  dtype: str = "float32",
  param_dtype: str | None = None,
  token_ids: TokenIds | None = None,
) -> ModelConfig:
  """ModelConfig from a Qwen2.5-VL `config.json` dict (either layout). Not validated here.

  `auto_map`, `trust_remote_code` and a `model_type` other than "qwen2_5_vl" (custom
  modeling code, e.g. the released ECHO checkpoints) are ignored: only the fields are
  read, and they must describe the Qwen2.5-VL layout (else ValueError naming the gaps).
  """
  model_type = hf.get("model_type")
  if model_type in _OTHER_ARCHITECTURES:
    raise ValueError(
      f"config.json has model_type={model_type!r}; only the Qwen2.5-VL layout is supported"
    )
  tc = {**hf, **(hf.get("text_config") or {})}  # nested fields win over flat ones
  vc = hf.get("vision_config") or {}
  if "vision_config" not in hf:
    raise ValueError(
      f"config.json (model_type={model_type!r}) has no vision_config: it does not describe "
      "a Qwen2.5-VL model"
    )
  absent = [f"text {k}" for k in _TEXT_FIELDS if k not in tc]
  absent += [f"vision_config.{k}" for k in _VISION_FIELDS if k not in vc]
  if absent:
    raise ValueError(
      f"config.json (model_type={model_type!r}) lacks the Qwen2.5-VL field(s) "
      f"{', '.join(absent)}; it is not a Qwen2.5-VL-shaped checkpoint"
    )
  for name, sub in (("text", tc), ("vision", vc)):
    if sub.get("hidden_act", "silu") != "silu":
      raise ValueError(f"{name} hidden_act={sub['hidden_act']!r} is not supported (only 'silu')")
  if tc.get("use_sliding_window"):
    raise ValueError("use_sliding_window=true is not supported (Qwen2.5-VL uses full attention)")

  rope = tc.get("rope_parameters") or tc.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "mrope"):
    raise ValueError(f"rope type {rope_type!r} is not supported (only plain multimodal RoPE)")
  if "mrope_section" not in rope:
    raise ValueError("config.json has no mrope_section (in rope_parameters or rope_scaling)")
  heads = tc["num_attention_heads"]
  if tc.get("head_dim") not in (None, tc["hidden_size"] // heads):
    raise ValueError(f"head_dim={tc['head_dim']} != hidden_size / num_attention_heads")
  text = TextConfig(
    vocab_size=tc["vocab_size"],
    hidden_size=tc["hidden_size"],
    intermediate_size=tc["intermediate_size"],
    num_hidden_layers=tc["num_hidden_layers"],
    num_attention_heads=heads,
    num_key_value_heads=tc.get("num_key_value_heads") or heads,
    rope_theta=float(rope.get("rope_theta", tc.get("rope_theta", 1_000_000.0))),
    mrope_section=tuple(rope["mrope_section"]),
    rms_norm_eps=tc.get("rms_norm_eps", 1e-6),
    tie_word_embeddings=bool(
      hf.get("tie_word_embeddings") or (hf.get("text_config") or {}).get("tie_word_embeddings")
    ),
  )
  vision = VisionConfig(
    depth=vc["depth"],
    hidden_size=vc["hidden_size"],
    intermediate_size=vc["intermediate_size"],
    num_heads=vc["num_heads"],
    in_channels=vc.get("in_channels", vc.get("in_chans", 3)),
    patch_size=vc.get("patch_size", vc.get("spatial_patch_size", 14)),
    temporal_patch_size=vc.get("temporal_patch_size", 2),
    spatial_merge_size=vc.get("spatial_merge_size", 2),
    window_size=vc.get("window_size", 112),
    fullatt_block_indexes=tuple(vc.get("fullatt_block_indexes", ())),
    out_hidden_size=vc.get("out_hidden_size", text.hidden_size),
    rope_theta=float((vc.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
  )
  if token_ids is None:
    defaults = TokenIds()
    eos = tc.get("eos_token_id", defaults.eos)
    pad = tc.get("pad_token_id")
    token_ids = dataclasses.replace(
      defaults,
      pad=pad if pad is not None else tc.get("bos_token_id", defaults.pad),
      eos=eos[0] if isinstance(eos, list) else eos,
      vision_start=hf.get("vision_start_token_id", defaults.vision_start),
      vision_end=hf.get("vision_end_token_id", defaults.vision_end),
      image_pad=hf.get("image_token_id", defaults.image_pad),
      video_pad=hf.get("video_token_id", defaults.video_pad),
    )
  return ModelConfig(
    vision=vision,
    text=text,
    tokens=token_ids,
    tokens_per_second=vc.get("tokens_per_second", 2),
    dtype=dtype,
    param_dtype=param_dtype or dtype,
  )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """A transformers 5 style `config.json` dict (also carrying the older rope keys)."""
  t, v, ids = config.text, config.vision, config.tokens
  torch_dtype = config.param_dtype
  text = {
    "model_type": "qwen2_5_vl_text",
    "vocab_size": t.vocab_size,
    "hidden_size": t.hidden_size,
    "intermediate_size": t.intermediate_size,
    "num_hidden_layers": t.num_hidden_layers,
    "num_attention_heads": t.num_attention_heads,
    "num_key_value_heads": t.num_key_value_heads,
    "hidden_act": "silu",
    "rms_norm_eps": t.rms_norm_eps,
    "max_position_embeddings": 128000,
    "use_sliding_window": False,
    "rope_parameters": {
      "rope_type": "default",
      "rope_theta": t.rope_theta,
      "mrope_section": list(t.mrope_section),
    },
    "bos_token_id": ids.pad,
    "eos_token_id": ids.eos,
    "pad_token_id": ids.pad,
    "tie_word_embeddings": t.tie_word_embeddings,
    "dtype": torch_dtype,
  }
  vision = {
    "model_type": "qwen2_5_vl_vision",
    "depth": v.depth,
    "hidden_size": v.hidden_size,
    "intermediate_size": v.intermediate_size,
    "num_heads": v.num_heads,
    "in_channels": v.in_channels,
    "patch_size": v.patch_size,
    "temporal_patch_size": v.temporal_patch_size,
    "spatial_merge_size": v.spatial_merge_size,
    "window_size": v.window_size,
    "fullatt_block_indexes": list(v.fullatt_block_indexes),
    "out_hidden_size": v.out_hidden_size,
    "tokens_per_second": config.tokens_per_second,
    "hidden_act": "silu",
    "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
  }
  return {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "text_config": text,
    "vision_config": vision,
    "image_token_id": ids.image_pad,
    "video_token_id": ids.video_pad,
    "vision_start_token_id": ids.vision_start,
    "vision_end_token_id": ids.vision_end,
    "tie_word_embeddings": t.tie_word_embeddings,
    "dtype": torch_dtype,
  }


# --- ECHO fields -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReleasedFields:
  """What a checkpoint directory says beyond the Qwen2.5-VL layout.

  model_type: config.json's model_type (a custom one for the released ECHO models);
  remote_code: the config asks for custom modeling code (`auto_map`), which is never run;
  mask: the resolved mask id and its source (mask_id.py), None when nothing states one;
  block_len: the block length stated by the config, None when absent.
  """

  model_type: str | None
  remote_code: bool
  mask: mask_id_lib.MaskId | None
  block_len: int | None


def read_config(path: str | pathlib.Path) -> dict[str, Any]:
  """The config.json of a checkpoint directory as a dict (ValueError when absent or bad)."""
  config_file = pathlib.Path(path) / "config.json"
  if not config_file.is_file():
    raise ValueError(f"{config_file} does not exist; expected a Hugging Face model directory")
  try:
    hf = json.loads(config_file.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{config_file} is not valid JSON ({e}); download it again") from None
  if not isinstance(hf, dict):
    raise ValueError(f"{config_file} holds a {type(hf).__name__}, not a JSON object")
  return hf


def released_fields(
  path: str | pathlib.Path, hf: dict[str, Any] | None = None, *, mask_token_id: int | None = None
) -> ReleasedFields:
  """The ECHO fields of a checkpoint directory (see ReleasedFields); reads data only."""
  hf = read_config(path) if hf is None else hf
  remote = any(
    key in where
    for key in ("auto_map", "trust_remote_code")
    for where in (hf, hf.get("text_config") or {}, hf.get("vision_config") or {})
  )
  return ReleasedFields(
    model_type=hf.get("model_type"),
    remote_code=remote,
    mask=mask_id_lib.resolve_mask_id(path, hf, mask_token_id),
    block_len=config_block_len(hf),
  )


def config_block_len(hf: dict[str, Any]) -> int | None:
  """The block length a config.json dict states (top level, then text_config), or None."""
  for where in (hf, hf.get("text_config") or {}):
    for key in _BLOCK_LENGTH_KEYS:
      value = where.get(key)
      if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
          raise ValueError(f"config.json has {key}={value!r}; expected a positive int")
        return value
  return None


# --- tensors ---------------------------------------------------------------------------------


def text_param_table(decoder: Qwen2Decoder) -> dict[str, tuple[nnx.Param, bool]]:
  """HF tensor name -> (our parameter, stored transposed). Kernels are (in, out) here."""
  table: dict[str, tuple[nnx.Param, bool]] = {
    "model.embed_tokens.weight": (decoder.embed_tokens.embedding, False),
    "model.norm.weight": (decoder.norm.weight, False),
  }
  for i, layer in enumerate(decoder.layers):
    pre = f"model.layers.{i}."
    table[pre + "input_layernorm.weight"] = (layer.input_layernorm.weight, False)
    table[pre + "post_attention_layernorm.weight"] = (layer.post_attention_layernorm.weight, False)
    attn = layer.self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
      table[pre + f"self_attn.{name}.weight"] = (getattr(attn, name).kernel, True)
      table[pre + f"self_attn.{name}.bias"] = (getattr(attn, name).bias, False)
    table[pre + "self_attn.o_proj.weight"] = (attn.o_proj.kernel, True)
    for name in ("gate_proj", "up_proj", "down_proj"):
      table[pre + f"mlp.{name}.weight"] = (getattr(layer.mlp, name).kernel, True)
  if decoder.lm_head is not None:
    table["lm_head.weight"] = (decoder.lm_head.kernel, True)
  return table


class _Checkpoint:
  """Lazy (memory-mapped) access to the tensors of a safetensors checkpoint directory."""

  def __init__(self, path: pathlib.Path):
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
    elif single.exists():
      files = [single.name]
    else:
      pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
      if pickles:
        raise ValueError(
          f"{path} holds only pickle checkpoints ({', '.join(pickles)}); they are refused "
          "because loading them can run code. Convert them to safetensors first "
          "(transformers: model.save_pretrained(dir, safe_serialization=True))."
        )
      raise ValueError(f"{path} has neither model.safetensors nor model.safetensors.index.json")
    self._where: dict[str, tuple[str, str]] = {}  # our name -> (file, stored name)
    for file in files:
      if not (path / file).is_file():
        raise ValueError(f"{path / file} is missing (listed in {index.name}); download it again")
      try:
        with safe_open(path / file, framework="numpy") as f:
          stored_names = list(f.keys())
      except Exception as e:  # safetensors' own error type: truncated or not safetensors
        raise ValueError(
          f"{path / file} is not a readable safetensors file ({e}): it is truncated or "
          "damaged; download it again"
        ) from None
      for stored in stored_names:
        name = stored
        for old, new in _NAME_ALIASES:
          if name.startswith(old):
            name = new + name[len(old) :]
            break
        if name in self._where:
          raise ValueError(f"tensor {name} appears twice in {path} (as {stored})")
        self._where[name] = (str(path / file), stored)

  def names(self) -> set[str]:
    return set(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    file, stored = self._where[name]
    with safe_open(file, framework="numpy") as f:
      return tuple(f.get_slice(stored).get_shape())

  def get(self, name: str) -> np.ndarray:
    file, stored = self._where[name]
    with safe_open(file, framework="numpy") as f:
      array = f.get_tensor(stored)
    if not jnp.issubdtype(array.dtype, jnp.floating):
      raise ValueError(
        f"tensor {name} in {file} has dtype {array.dtype}; weights are floating point"
      )
    return array


def _names(names: list[str], limit: int = 8) -> str:
  more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _check_tensors(
  path: pathlib.Path,
  ckpt: _Checkpoint,
  text_names: set[str],
  table: dict[str, tuple[nnx.Param, bool]],
  edited: dict[str, np.ndarray],
  vision_shapes: dict[str, tuple[int, ...]],
) -> None:
  """One ValueError listing every missing, unexpected and mis-shaped tensor (shapes are
  read from the file headers, nothing is loaded)."""
  want = {
    name: (param.value.shape[::-1] if transposed else param.value.shape)
    for name, (param, transposed) in table.items()
  }
  want.update(vision_shapes)
  have = text_names | {n for n in ckpt.names() if n.startswith(_VISION_PREFIX)}
  missing = sorted(set(want) - have)
  extra = sorted(have - set(want))
  shapes = {n: (edited[n].shape if n in edited else ckpt.shape(n)) for n in set(want) & have}
  wrong = sorted(
    f"{n} {tuple(shapes[n])} (expected {tuple(want[n])})"
    for n in shapes
    if tuple(shapes[n]) != tuple(want[n])
  )
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing: {_names(missing)}")
  if extra:
    problems.append(f"{len(extra)} unexpected: {_names(extra)}")
  if wrong:
    problems.append(f"{len(wrong)} mis-shaped: {_names(wrong)}")
  if problems:
    raise CheckpointError(
      "tensors that do not match config.json",
      where=str(path),
      why="; ".join(problems),
      fix="check that config.json and the weights come from the same checkpoint",
    )


def load_pretrained(
  path: str | pathlib.Path,
  *,
  dtype: str = "float32",
  param_dtype: str | None = None,
  mask_token_id: int | None = None,
  token_ids: TokenIds | None = None,
) -> tuple[EchoVLM, ModelConfig]:
  """Build an EchoVLM from a Hugging Face Qwen2.5-VL safetensors checkpoint directory.

  dtype: compute dtype ("float32" | "bfloat16"); param_dtype: storage dtype (default dtype).
  token_ids: special token ids; by default taken from config.json where it has them
    (pad, eos, vision ids) and from `TokenIds()` otherwise (im_start, mask).
  mask_token_id: id of the diffusion token <|MASK|>. By default the directory's own:
    config.json `mask_token_id`, else the tokenizer's mask token, else the id of
    <|MASK|> in tokenizer.json (mask_id.py; all stated ids must agree, and must agree
    with token_ids.mask when token_ids is given); else token_ids.mask.
    Qwen2.5-VL-7B's embedding has spare rows past its tokenizer, so the id usually has
    a row already. If the id equals the number of rows, one row is appended to the
    embedding (and to an untied lm_head), initialized to the mean of the existing rows,
    and vocab_size grows by one. A larger id is refused.
  """
  path = pathlib.Path(path)
  hf = read_config(path)
  config = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, token_ids=token_ids)
  resolved = mask_id_lib.resolve_mask_id(path, hf, mask_token_id)
  if resolved is not None:
    if token_ids is not None and mask_token_id is None and token_ids.mask != resolved.id:
      raise CheckpointError(
        "a mask token id that disagrees with the tokenizer in use",
        where=str(path),
        why=f"{resolved.source} = {resolved.id} but the given token_ids say mask={token_ids.mask}",
        fix="load the tokenizer shipped with these weights",
      )
    config = config.replace(tokens=dataclasses.replace(config.tokens, mask=resolved.id))
  ckpt = _Checkpoint(path)

  # Tensors are read one at a time (memory-mapped) so a 7B import holds about one copy.
  names = {n for n in ckpt.names() if not n.startswith(_VISION_PREFIX)}
  if "model.embed_tokens.weight" not in names:
    raise ValueError(
      f"{path} has no model.embed_tokens.weight (nor model.language_model.embed_tokens.weight)"
    )
  edited: dict[str, np.ndarray] = {}  # tensors changed on import (tables with a new row)
  rows = ckpt.shape("model.embed_tokens.weight")[0]
  if rows != config.text.vocab_size:
    raise ValueError(
      f"model.embed_tokens.weight has {rows} rows but config.json says vocab_size="
      f"{config.text.vocab_size}"
    )
  if config.text.tie_word_embeddings and "lm_head.weight" in names:
    names.discard("lm_head.weight")
    if not np.array_equal(ckpt.get("lm_head.weight"), ckpt.get("model.embed_tokens.weight")):
      raise ValueError("tie_word_embeddings is true but lm_head.weight differs from the embedding")
  mask = config.tokens.mask
  if mask == rows:
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
      if name in names:
        table = ckpt.get(name)
        mean = table.astype(np.float32).mean(axis=0, keepdims=True).astype(table.dtype)
        edited[name] = np.concatenate([table, mean], axis=0)
    config = config.replace(text=dataclasses.replace(config.text, vocab_size=rows + 1))
  elif mask > rows:
    raise ValueError(
      f"mask_token_id={mask} is beyond the vocabulary ({rows} rows); only the next id "
      f"({rows}) can be added. Pass mask_token_id=..."
    )
  config.validate()

  model = nnx.eval_shape(lambda: EchoVLM(config, rngs=nnx.Rngs(0)))
  table = text_param_table(model.text)
  _check_tensors(path, ckpt, names, table, edited, vision_hf_shapes(model.vision, _VISION_PREFIX))
  for name, (param, transposed) in table.items():
    array = edited[name] if name in edited else ckpt.get(name)
    param.value = jnp.asarray(array.T if transposed else array, dtype=param.value.dtype)
  vision = {n: ckpt.get(n) for n in ckpt.names() if n.startswith(_VISION_PREFIX)}
  vision_from_hf(model.vision, vision, _VISION_PREFIX)
  unset = [
    jax.tree_util.keystr(p)
    for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model))
    if isinstance(v, jax.ShapeDtypeStruct)
  ]
  if unset:
    raise ValueError(f"parameters not set from the checkpoint: {_names(unset)}")
  return model, config


def save_pretrained(
  model: EchoVLM, config: ModelConfig, path: str | pathlib.Path, *, block_len: int | None = None
) -> None:
  """Write `config.json` and `model.safetensors` (param dtype) that transformers opens with
  `Qwen2_5_VLForConditionalGeneration.from_pretrained(path)`. A single file, unsharded.

  config.json also states `mask_token_id` (so load_pretrained gives back the same
  <|MASK|> id) and, when given, the block length as `block_length` (config_block_len).
  The tokenizer, processor and generation files are written by echo_jax/export.py."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  tensors: dict[str, np.ndarray] = {}
  for name, (param, transposed) in text_param_table(model.text).items():
    array = np.asarray(jax.device_get(param.value))
    tensors[name] = np.ascontiguousarray(array.T if transposed else array)
  for name, array in vision_to_hf(model.vision, _VISION_PREFIX).items():
    tensors[name] = np.ascontiguousarray(array)
  hf = {**config_to_hf(config), "mask_token_id": config.tokens.mask}
  if block_len is not None:
    hf["block_length"] = int(block_len)
  (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
