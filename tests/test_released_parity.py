"""echo_jax's released profile against an independent PyTorch reference, report for report.

The tiny random model of tests/tiny_vlm.py is exported as a Hugging Face Qwen2.5-VL
directory; transformers runs it under `released_reference.ReleasedReference` (4-D block
masks, a DynamicCache cut back to the last block boundary inside the prompt, the prompt's
tail recomputed with the first block), and echo_jax decodes the same studies through
`load_pretrained` -> `ReportGenerator` -> `profiles.make_sampler(released profile)`.
One-step (fused) and multi-step (steps = B, tau 0.85), B = 4 and 8.

To make the comparison bite, the exported weights are edited so that greedy confidences
straddle tau (a random untied head of the right spread) and EOS competes with ordinary tokens (its
tied embedding row is a scaled copy of a frequent token's), so reports end at different
blocks, some by EOS and some by the budget.
"""

import dataclasses
import json

import numpy as np
import pytest
import tiny_vlm
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from released_reference import ReleasedReference  # noqa: E402

from echo_jax import profiles  # noqa: E402
from echo_jax.data import images  # noqa: E402
from echo_jax.inference import ReportGenerator  # noqa: E402
from echo_jax.models.hf_import import load_pretrained, save_pretrained  # noqa: E402

GEN = 16  # new tokens per report
CONTEXT_LEN = 160
MAX_PATCHES = 48  # three 4x4-patch images
EOS_TWIN = 38
HEAD_STD = 4.0
ATTN_SCALE = 10.0


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
  setup = tiny_vlm.make_setup(str(tmp_path_factory.mktemp("data")), seed=11)
  path = tmp_path_factory.mktemp("hf") / "ECHO_tiny"
  save_pretrained(setup.model, setup.config, path)
  tensors = load_file(path / "model.safetensors")
  for name in tensors:
    # Let attention (context, positions) dominate the residual stream: at random init it is
    # small, and every masked position would predict the same token.
    if name.endswith(("self_attn.o_proj.weight", "self_attn.v_proj.weight")):
      tensors[name] = tensors[name] * ATTN_SCALE
  # An untied head: the random model would otherwise predict <|MASK|> at masked positions
  # (its hidden state stays close to the input embedding), which trained models never do.
  table = tensors["model.embed_tokens.weight"]
  head = np.random.default_rng(0).normal(0, HEAD_STD, table.shape).astype(table.dtype)
  ids = setup.config.tokens
  head[ids.mask] = -4.0 * table[ids.mask]
  head[ids.eos] = 1.05 * head[EOS_TWIN]  # EOS wins wherever this token would
  tensors["lm_head.weight"] = head
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
  config = json.loads((path / "config.json").read_text())
  config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = False
  (path / "config.json").write_text(json.dumps(config))
  setup.tokenizer.save(str(path))
  return setup, path


def _studies(setup):
  """Studies of 1, 2, 3 and 1 images: prompts of different lengths, so different tails
  (with B = 8 one tail holds the user turn's <|im_end|>, which must not stop decoding)."""
  s = setup.studies
  merged = lambda parts: dataclasses.replace(
    parts[0],
    id="+".join(p.id for p in parts),
    image_paths=sum((p.image_paths for p in parts), ()),
    view_positions=sum((p.view_positions for p in parts), ()),
  )
  return [s[0], merged(s[1:3]), merged(s[3:6]), s[6]]


@pytest.mark.parametrize(
  "sampler, block_len",
  [
    ("one_step", 4),
    pytest.param("one_step", 8, marks=pytest.mark.slow),  # the same code path at B = 8
    pytest.param("multi_step", 4, marks=pytest.mark.slow),  # the same code path at B = 4
    ("multi_step", 8),
  ],
)
def test_released_profile_matches_torch_reference(released_dir, sampler, block_len):
  setup, path = released_dir
  model, config = load_pretrained(path, token_ids=setup.tokenizer.ids)
  profile = profiles.released_profile(str(path), sampler=sampler, block_len=block_len)
  profile = profile.with_overrides(
    max_new_tokens=GEN, min_pixels=tiny_vlm.PIXELS, max_pixels=tiny_vlm.PIXELS
  )
  example_fn = dataclasses.replace(
    tiny_vlm.example_fn(setup.tokenizer, config, CONTEXT_LEN),
    instruction=profile.instruction,
    max_patches=MAX_PATCHES,
  )
  studies = _studies(setup)
  gen = ReportGenerator(model, setup.tokenizer, example_fn, batch_size=2)
  out_rows = []
  for _, real, context in gen.batches(studies):
    out, _ = gen.decode(profiles.make_sampler(profile, config.tokens), context)
    for b in range(real):
      n = int(out.lengths_B[b])
      out_rows.append(([int(t) for t in out.tokens_BR[b, :n]], int(out.stats.forwards_B[b])))

  hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
    path, attn_implementation="eager", dtype=torch.float32
  ).eval()
  ids = config.tokens
  reference = ReleasedReference(hf, mask_id=ids.mask, eos_id=ids.eos)
  image_config = example_fn.image_config
  ended, tails, several_per_step = 0, set(), False
  for study, (ours, forwards) in zip(studies, out_rows, strict=True):
    ex = example_fn(study)
    prompt = np.asarray(ex["context_tokens"])[np.asarray(ex["context_valid"])]
    patches, grid = images.load_study_images(study.image_paths, image_config)
    positions, _ = hf.model.get_rope_index(
      torch.tensor(prompt[None]).long(),
      torch.tensor(prompt[None] == ids.image_pad).long(),
      torch.tensor(grid).long(),
      attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
    )
    want, _ = reference.generate(
      prompt,
      positions[:, 0].numpy(),
      block_len=block_len,
      steps=1 if sampler == "one_step" else block_len,
      gen_length=GEN,
      pixel_values=patches,
      image_grid_thw=grid,
    )
    assert ours == want, f"study {study.id}: echo_jax {ours} != reference {want}"
    ended += len(want) < GEN
    tails.add(len(prompt) % block_len)
    several_per_step |= forwards < len(want)  # some step committed more than one token
  # The cases the comparison is meant to cover did occur.
  assert ended >= 1, "no report ended by EOS: the test does not exercise the stop rule"
  assert tails != {0}, "every prompt ended on a block boundary: no tail was recomputed"
  if sampler == "multi_step":
    assert several_per_step, "no confidence above tau: the threshold rule was not exercised"
