"""Parity with transformers' Qwen2.5-VL on tiny random models, import and export.

Each case builds a random `Qwen2_5_VLForConditionalGeneration` from a config (no
download), saves it as safetensors, loads it with `echo_jax.load_pretrained` and
compares vision features, 3-D positions and LLM logits; then exports with
`save_pretrained` and reopens the export in transformers.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import echo_jax  # noqa: E402
from echo_jax.models import hf_import  # noqa: E402
from echo_jax.models.positions import batch_rope_positions  # noqa: E402
from echo_jax.models.presets import TINY_TOKEN_IDS  # noqa: E402
from echo_jax.models.vision import prepare_vision_inputs  # noqa: E402

IDS = TINY_TOKEN_IDS  # pad 0, im_start 1, eos 2, vision_start 3, vision_end 4, image_pad 5
VOCAB = 64
PATCH_DIM = 3 * 2 * 14 * 14
TOL = 1e-4

CASES = {
  # GQA ratio 1, tied embeddings, two images (one non-square) in one prompt.
  "mha_tied_two_images": dict(
    heads=4, kv=4, tie=True, depth=2, fullatt=[1], images=[[(1, 4, 8), (1, 4, 4)]], left_pad=[0]
  ),
  # GQA ratio 2, untied, batch of two with left padding, window + full attention blocks.
  "gqa2_untied_left_pad": dict(
    heads=4,
    kv=2,
    tie=False,
    depth=3,
    fullatt=[0, 2],
    images=[[(1, 12, 8)], [(1, 4, 8)]],
    left_pad=[0, 5],
  ),
  # GQA ratio 3, untied, text only; <|MASK|> gets a new embedding row on import.
  "gqa3_text_new_mask_row": dict(
    heads=6, kv=2, tie=False, depth=1, fullatt=[0], images=[[]], left_pad=[2], mask_token_id=VOCAB
  ),
}


def _hf_config(case):
  hidden = 8 * case["heads"]
  return transformers.Qwen2_5_VLConfig(
    text_config=dict(
      vocab_size=VOCAB,
      hidden_size=hidden,
      intermediate_size=40,
      num_hidden_layers=2,
      num_attention_heads=case["heads"],
      num_key_value_heads=case["kv"],
      rms_norm_eps=1e-6,
      rope_parameters=dict(rope_type="default", mrope_section=[1, 1, 2], rope_theta=10000.0),
      max_position_embeddings=512,
      bos_token_id=IDS.pad,
      eos_token_id=IDS.eos,
      pad_token_id=IDS.pad,
    ),
    vision_config=dict(
      depth=case["depth"],
      hidden_size=32,
      intermediate_size=24,
      num_heads=2,
      out_hidden_size=hidden,
      window_size=56,
      fullatt_block_indexes=case["fullatt"],
    ),
    image_token_id=IDS.image_pad,
    video_token_id=IDS.video_pad,
    vision_start_token_id=IDS.vision_start,
    vision_end_token_id=IDS.vision_end,
    tie_word_embeddings=case["tie"],
  )


def _prompt(images, left_pad, rng):
  """Left-padded tokens with <|vision_start|> image_pad* <|vision_end|> per image."""
  toks = [IDS.im_start, *rng.integers(8, VOCAB, 2)]
  for _, h, w in images:
    toks += [IDS.vision_start] + [IDS.image_pad] * (h * w // 4) + [IDS.vision_end]
    toks += list(rng.integers(8, VOCAB, 3))
  return [IDS.pad] * left_pad + toks


def _batch(case, rng):
  prompts = [_prompt(im, lp, rng) for im, lp in zip(case["images"], case["left_pad"])]
  length = max(map(len, prompts))
  tokens = np.array([[IDS.pad] * (length - len(p)) + p for p in prompts], np.int32)
  pads = [length - len(p) + lp for p, lp in zip(prompts, case["left_pad"])]
  valid = np.arange(length)[None] >= np.array(pads)[:, None]
  grids = [np.array(im, np.int64).reshape(-1, 3) for im in case["images"]]
  patches = [
    rng.standard_normal((int(g.prod(1).sum()), PATCH_DIM)).astype(np.float32) for g in grids
  ]
  return tokens, valid, grids, patches


def _hf_logits(hf, tokens, valid, grids, patches, positions_3BL):
  kw = {}
  if any(len(g) for g in grids):
    kw = dict(
      pixel_values=torch.tensor(np.concatenate(patches)),
      image_grid_thw=torch.tensor(np.concatenate(grids)),
    )
  with torch.no_grad():
    out = hf(
      input_ids=torch.tensor(tokens).long(),
      attention_mask=torch.tensor(valid).long(),
      position_ids=torch.tensor(positions_3BL).long(),
      **kw,
    )
  return out.logits.numpy()


def _rel_err(ours, ref):
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


@jax.jit
def _forward(graphdef, state, tokens, positions, mask, vision):
  """Logits and, with images, the vision tower's merged features (one compilation)."""
  model = nnx.merge(graphdef, state)
  features = None if vision is None else model.vision(vision)
  return model(tokens, positions, mask, vision), features


@pytest.mark.parametrize("name", list(CASES))
def test_parity_and_round_trip(name, tmp_path):
  case = CASES[name]
  rng = np.random.default_rng(0)
  torch.manual_seed(0)
  hf = transformers.Qwen2_5_VLForConditionalGeneration(_hf_config(case)).eval()
  hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
  mask_id = case.get("mask_token_id", 7)
  model, config = echo_jax.load_pretrained(tmp_path / "hf", mask_token_id=mask_id, token_ids=IDS)
  assert config.tokens.mask == mask_id
  assert config.text.tie_word_embeddings == case["tie"]
  assert config.text.num_key_value_heads == case["kv"]

  tokens, valid, grids, patches = _batch(case, rng)
  b, length = tokens.shape
  positions, next_pos = batch_rope_positions(tokens, grids, valid, config)

  # Positions: transformers' get_rope_index on the same tokens.
  if any(len(g) for g in grids):
    hf_pos, hf_delta = hf.model.get_rope_index(
      torch.tensor(tokens).long(),
      torch.tensor(tokens == IDS.image_pad).long(),
      torch.tensor(np.concatenate(grids)),
      attention_mask=torch.tensor(valid).long(),
    )
    np.testing.assert_array_equal(positions, hf_pos.numpy())
    np.testing.assert_array_equal(next_pos, hf_delta[:, 0].numpy() + valid.sum(1))

  vision = None
  if any(len(g) for g in grids):
    vision = prepare_vision_inputs(patches, grids, config.vision, max_patches=128)
  causal = np.tril(np.ones((length, length), bool))
  mask = (causal[None] & valid[:, None, :]) | np.eye(length, dtype=bool)[None]
  graphdef, state = nnx.split(model)
  ours, features = _forward(graphdef, state, tokens, positions, jnp.asarray(mask), vision)
  ours = np.asarray(ours)
  if vision is not None:
    feats, valid_m = features
    for i in range(b):
      with torch.no_grad():
        ref = hf.model.visual(
          torch.tensor(patches[i]), grid_thw=torch.tensor(grids[i])
        ).pooler_output
      n = ref.shape[0]
      assert int(valid_m[i].sum()) == n
      assert _rel_err(feats[i, :n], ref.numpy()) <= TOL
  ref = _hf_logits(hf, tokens, valid, grids, patches, positions)
  new_row = mask_id == VOCAB
  assert ours.shape == (b, length, VOCAB + new_row)
  assert _rel_err(ours[valid][:, :VOCAB], ref[valid]) <= TOL

  # Export and reopen in transformers: same logits as ours (incl. a new <|MASK|> row).
  hf_import.save_pretrained(model, config, tmp_path / "export")
  back = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
  again = _hf_logits(back, tokens, valid, grids, patches, positions)
  assert _rel_err(ours[valid], again[valid]) <= TOL
  if new_row:
    table = np.asarray(model.text.embed_tokens.embedding[...])
    np.testing.assert_allclose(table[VOCAB], table[:VOCAB].mean(0), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("ckpt")
  case = dict(CASES["gqa2_untied_left_pad"], depth=1, fullatt=[0])
  torch.manual_seed(1)
  hf = transformers.Qwen2_5_VLForConditionalGeneration(_hf_config(case))
  hf.save_pretrained(path, safe_serialization=True)
  return path


def _copy_with(src: pathlib.Path, dst: pathlib.Path, edit) -> pathlib.Path:
  from safetensors.numpy import load_file, save_file

  dst.mkdir()
  config = json.loads((src / "config.json").read_text())
  tensors = load_file(src / "model.safetensors")
  edit(config, tensors)
  (dst / "config.json").write_text(json.dumps(config))
  save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
  return dst


def test_refuses_pickle(tiny_checkpoint, tmp_path):
  (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
  (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(ValueError, match="pickle"):
    echo_jax.load_pretrained(tmp_path, token_ids=IDS)


def test_remote_code_config_is_read_as_data(tiny_checkpoint, tmp_path):
  """`auto_map` names code in the directory; the weights load and the code never runs."""
  edit = lambda config, tensors: config.update(auto_map={"AutoModel": "modeling_x.Y"})
  path = _copy_with(tiny_checkpoint, tmp_path / "remote", edit)
  (path / "modeling_x.py").write_text("raise SystemExit('remote code ran')\n")
  model, _ = echo_jax.load_pretrained(path, token_ids=IDS)
  plain, _ = echo_jax.load_pretrained(tiny_checkpoint, token_ids=IDS)
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(plain))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
  "edit, message",
  [
    (
      lambda c, t: t.pop("model.layers.1.mlp.up_proj.weight"),
      "missing.*model.layers.1.mlp.up_proj.weight",
    ),
    (lambda c, t: t.update(extra=np.zeros(3, np.float32)), "unexpected.*extra"),
    (
      lambda c, t: t.update({"model.layers.0.self_attn.k_proj.bias": np.zeros(3, np.float32)}),
      r"mis-shaped: model.layers.0.self_attn.k_proj.bias \(3,\)",
    ),
    (lambda c, t: t.pop("visual.blocks.0.attn.qkv.bias"), "visual.blocks.0.attn.qkv.bias"),
  ],
  ids=["missing", "extra", "misshaped", "missing_vision"],
)
def test_bad_tensors_are_named(tiny_checkpoint, tmp_path, edit, message):
  path = _copy_with(tiny_checkpoint, tmp_path / "bad", edit)
  with pytest.raises(ValueError, match=message):
    echo_jax.load_pretrained(path, token_ids=IDS)


def test_flat_legacy_config_layout():
  """The older flat config.json (text fields at the top, rope_scaling) maps the same way."""
  flat = {
    "model_type": "qwen2_5_vl",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": False,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_config": {
      "depth": 32,
      "hidden_size": 1280,
      "intermediate_size": 3420,
      "num_heads": 16,
      "in_chans": 3,
      "out_hidden_size": 3584,
      "patch_size": 14,
      "spatial_merge_size": 2,
      "spatial_patch_size": 14,
      "temporal_patch_size": 2,
      "window_size": 112,
      "fullatt_block_indexes": [7, 15, 23, 31],
      "tokens_per_second": 2,
      "hidden_act": "silu",
    },
  }
  from echo_jax.models.config import ModelConfig

  assert hf_import.config_from_hf(flat) == ModelConfig()
  # And our export maps back to the same config.
  assert hf_import.config_from_hf(hf_import.config_to_hf(ModelConfig())) == ModelConfig()
