"""Released ECHO directories: weights-only import, mask id resolution, the released profile.

A fake released directory is a tiny random transformers Qwen2.5-VL saved as safetensors,
then dressed as the authors' checkpoints are: a custom model_type, `auto_map` pointing at
modeling code that sits next to the weights (and would leave a trace if it ever ran),
`mask_token_id` and a block length in config.json, a tokenizer.json naming <|MASK|>, and
the tensors under either transformers naming generation.
"""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import echo_jax  # noqa: E402
from echo_jax import profiles  # noqa: E402
from echo_jax.models import hf_import, mask_id  # noqa: E402
from echo_jax.models.decode_model import DecodeContext, EchoDecodeModel  # noqa: E402
from echo_jax.models.presets import TINY_TOKEN_IDS  # noqa: E402
from echo_jax.user_errors import UserError  # noqa: E402

VOCAB = 64
MASK = 63
IDS = dataclasses.replace(TINY_TOKEN_IDS, mask=MASK)  # what the directory's tokenizer gives
SENTINEL = "remote_code_ran.txt"


def _tiny_hf(path: pathlib.Path) -> pathlib.Path:
  config = transformers.Qwen2_5_VLConfig(
    text_config=dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=40,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      rope_parameters=dict(rope_type="default", mrope_section=[1, 1, 2], rope_theta=10000.0),
      bos_token_id=IDS.pad,
      eos_token_id=IDS.eos,
      pad_token_id=IDS.pad,
    ),
    vision_config=dict(
      depth=1,
      hidden_size=32,
      intermediate_size=24,
      num_heads=2,
      out_hidden_size=32,
      window_size=56,
      fullatt_block_indexes=[0],
    ),
    image_token_id=IDS.image_pad,
    video_token_id=IDS.video_pad,
    vision_start_token_id=IDS.vision_start,
    vision_end_token_id=IDS.vision_end,
  )
  torch.manual_seed(0)
  transformers.Qwen2_5_VLForConditionalGeneration(config).save_pretrained(
    path, safe_serialization=True
  )
  return path


def _rename_new_generation(name: str) -> str:
  """transformers >= 4.52 module names: model.language_model.* and model.visual.*."""
  if name.startswith("model."):
    return "model.language_model." + name[len("model.") :]
  if name.startswith("visual."):
    return "model." + name
  return name


def _tokenizer_json(mask_id_value: int, mask_string: str = "<|MASK|>") -> dict:
  return {
    "model": {"type": "BPE", "vocab": {"a": 8, "b": 9}},
    "added_tokens": [{"id": mask_id_value, "content": mask_string, "special": True}],
  }


def _released_copy(src: pathlib.Path, dst: pathlib.Path, *, new_names: bool, **config_changes):
  dst.mkdir()
  config = json.loads((src / "config.json").read_text())
  config.update(
    model_type="echo_block_diffusion_vl",
    architectures=["EchoForCausalLM"],
    auto_map={"AutoModelForCausalLM": "modeling_echo.EchoForCausalLM"},
    mask_token_id=MASK,
    block_length=4,
  )
  config.update(config_changes)
  (dst / "config.json").write_text(json.dumps(config))
  (dst / "modeling_echo.py").write_text(
    f"import pathlib\npathlib.Path(__file__).with_name({SENTINEL!r}).write_text('ran')\n"
  )
  (dst / "tokenizer.json").write_text(json.dumps(_tokenizer_json(MASK)))
  tensors = load_file(src / "model.safetensors")
  if new_names:
    tensors = {_rename_new_generation(k): v for k, v in tensors.items()}
  save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
  return dst


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  return _tiny_hf(tmp_path_factory.mktemp("plain"))


def _params(model):
  return jax.tree.leaves(nnx.state(model))


@pytest.mark.parametrize("new_names", [False, True], ids=["old_names", "new_names"])
def test_released_directory_loads_weights_only_and_decodes(plain, tmp_path, new_names):
  path = _released_copy(plain, tmp_path / "ECHO_block4", new_names=new_names)
  model, config = echo_jax.load_pretrained(path, token_ids=IDS)
  assert not (path / SENTINEL).exists()  # the directory's modeling code never ran
  assert config.tokens.mask == MASK and config.text.vocab_size == VOCAB
  fields = hf_import.released_fields(path)
  assert fields.remote_code and fields.model_type == "echo_block_diffusion_vl"
  assert fields.block_len == 4
  assert fields.mask == mask_id.MaskId(MASK, "config.json mask_token_id")

  # Same weights as the plain directory read with the mask id given by hand.
  reference, _ = echo_jax.load_pretrained(plain, token_ids=IDS, mask_token_id=MASK)
  for ours, ref in zip(_params(model), _params(reference), strict=True):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))

  # And it decodes under its released profile: ECHO_block4 -> one step per block of 4.
  profile = profiles.profile_for(str(path)).with_overrides(max_new_tokens=8)
  assert (profile.name, profile.sampler, profile.block_len, profile.grid) == (
    "released",
    "one_step",
    4,
    "released",
  )
  sampler = profiles.make_sampler(profile, config.tokens)
  rng = np.random.default_rng(0)
  tokens = np.concatenate([[IDS.pad] * 3, [IDS.im_start], rng.integers(8, MASK, 10)])[None]
  length = tokens.shape[1]
  context = DecodeContext(
    tokens_BP=np.asarray(tokens, np.int32),
    positions_3BP=np.broadcast_to(np.maximum(np.arange(length) - 3, 0), (3, 1, length)).astype(
      np.int32
    ),
    valid_BP=np.arange(length)[None] >= 3,
  )
  out = sampler(*EchoDecodeModel.from_model(model), context)
  again = sampler(*EchoDecodeModel.from_model(reference), context)
  np.testing.assert_array_equal(np.asarray(out.tokens_BR), np.asarray(again.tokens_BR))
  # The prompt (11 tokens) leaves a tail of 3 in the first block: 1 + 8 / 4 blocks decoded
  # unless EOS came first; one forward each.
  forwards = int(out.stats.forwards_B[0])
  assert 1 <= forwards <= 3 and int(out.stats.tokens_B[0]) == 4 * forwards - 3


def test_mask_ids_that_disagree_are_refused(plain, tmp_path):
  path = _released_copy(plain, tmp_path / "a", new_names=False)
  (path / "tokenizer.json").write_text(json.dumps(_tokenizer_json(62)))
  with pytest.raises(
    ValueError, match=r"disagree.*config.json mask_token_id = 63.*<\|MASK\|> = 62"
  ):
    echo_jax.load_pretrained(path, token_ids=IDS)

  # The tokenizer's own mask token (tokenizer_config.json) is a source too.
  path = _released_copy(plain, tmp_path / "b", new_names=False)
  (path / "tokenizer.json").write_text(json.dumps(_tokenizer_json(61, "[MASK]")))
  (path / "tokenizer_config.json").write_text(json.dumps({"mask_token": {"content": "[MASK]"}}))
  with pytest.raises(ValueError, match=r"mask_token_id = 63, tokenizer mask_token '\[MASK\]' = 61"):
    echo_jax.load_pretrained(path, token_ids=IDS)

  # A tokenizer in use whose mask differs from the directory's is refused as well.
  path = _released_copy(plain, tmp_path / "c", new_names=False)
  with pytest.raises(ValueError, match="token_ids say mask=7"):
    echo_jax.load_pretrained(path, token_ids=TINY_TOKEN_IDS)


def test_mask_id_priority_without_config_field(plain, tmp_path):
  path = _released_copy(plain, tmp_path / "d", new_names=False)
  config = json.loads((path / "config.json").read_text())
  del config["mask_token_id"]
  (path / "config.json").write_text(json.dumps(config))
  (path / "tokenizer.json").write_text(json.dumps(_tokenizer_json(60)))
  _, loaded = echo_jax.load_pretrained(path, token_ids=dataclasses.replace(IDS, mask=60))
  assert loaded.tokens.mask == 60
  assert hf_import.released_fields(path).mask.source == "tokenizer.json id of <|MASK|>"


def test_bad_tensors_are_listed_in_one_message(plain, tmp_path):
  path = _released_copy(plain, tmp_path / "bad", new_names=True)
  tensors = load_file(path / "model.safetensors")
  del tensors["model.language_model.layers.1.mlp.up_proj.weight"]
  tensors["model.language_model.extra.weight"] = np.zeros(3, np.float32)
  tensors["model.visual.blocks.0.attn.qkv.bias"] = np.zeros(5, np.float32)
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError) as info:
    echo_jax.load_pretrained(path, token_ids=IDS)
  message = str(info.value)
  assert "1 missing: model.layers.1.mlp.up_proj.weight" in message
  assert "1 unexpected: model.extra.weight" in message
  assert "1 mis-shaped: visual.blocks.0.attn.qkv.bias (5,) (expected (96,))" in message


def test_configs_that_are_not_qwen2_5_vl_are_refused(plain, tmp_path):
  path = _released_copy(plain, tmp_path / "other", new_names=False, model_type="qwen3_vl")
  with pytest.raises(ValueError, match="model_type='qwen3_vl'"):
    echo_jax.load_pretrained(path, token_ids=IDS)
  hf = json.loads((plain / "config.json").read_text())
  hf["model_type"] = "custom"
  del hf["text_config"]["num_hidden_layers"]
  with pytest.raises(ValueError, match="lacks the Qwen2.5-VL field.*num_hidden_layers"):
    hf_import.config_from_hf(hf)


def test_released_profiles():
  base = profiles.released_profile("/w/Midea-AIRC/ECHO_Base_block4", lang="zh")
  assert (base.sampler, base.block_len, base.steps, base.threshold) == ("multi_step", 4, 4, 0.85)
  assert (base.max_new_tokens, base.min_pixels, base.max_pixels) == (512, 200704, 2250000)
  assert base.instruction == profiles.RELEASED_INSTRUCTIONS["zh"] and base.grid == "released"
  one = profiles.released_profile("/w/ECHO_block8/")
  assert (one.sampler, one.block_len, one.lang) == ("one_step", 8, "en")
  assert one.instruction.startswith("Review this chest X-ray and write a report.Use this")
  sampler = profiles.make_sampler(base, IDS)
  assert (sampler.steps, sampler.block_len, sampler.grid, sampler.fused_append) == (
    4,
    4,
    "released",
    False,
  )
  # echo_jax workdirs: aligned grid, block length and sampler from the training config.
  saved = {"stage": "dcd", "rad": {"block_len": 4}, "model": {"preset": "tiny"}}
  own = profiles.profile_for("/w/dcd_b4", saved)
  assert (own.name, own.sampler, own.block_len, own.grid) == ("echo_jax", "one_step", 4, "aligned")
  assert profiles.profile_for("/w/rad", {"stage": "rad", "model": {}}).sampler == "multi_step"
  newer = {"stage": "dcd", "block_len": 4, "model": {}}  # the block length at the top level
  assert profiles.profile_for("/w/dcd_b4", newer).block_len == 4
  assert profiles.profile_for("/w/x", {}, profile="released").name == "released"
  with pytest.raises(UserError, match="English instruction only"):
    profiles.profile_for("/w/dcd_b4", saved, lang="zh")


def test_block_length_of_name_and_config_must_agree(plain, tmp_path):
  path = _released_copy(plain, tmp_path / "ECHO_block8", new_names=False)  # config says 4
  with pytest.raises(UserError, match="name says block length 8 but config.json says 4"):
    profiles.released_profile(str(path))
