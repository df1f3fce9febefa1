"""`python -m echo_jax.export` on a tiny workdir: what transformers and echo_jax read back.

The workdir holds the tiny preset with weights that act like trained ones rather than
random ones: at random init the layers barely move the residual stream, so with the
tied head each position predicts its own input token and 1-D and 3-D image positions
give the same greedy text. Scaling the attention and MLP outputs and sharpening the
attention (`_peaky`) makes the prompt, and so the positions, decide the tokens; the
tests check that they do (the reports differ between studies and 1-D positions change
the greedy tokens) before trusting the parity. The parity with transformers' `generate`
is also checked on a model after a short AR training run (`trained`), where reports end
with their EOS.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tiny_vlm
from etils import epath
from flax import nnx

from echo_jax import export, profiles, runs
from echo_jax.data import images
from echo_jax.data import tokenizer as tokenizer_lib
from echo_jax.data.pipeline import stack_examples
from echo_jax.inference import ReportGenerator, make_sampler
from echo_jax.models.positions import batch_rope_positions
from echo_jax.models.vision import prepare_vision_inputs
from echo_jax.train import objectives
from echo_jax.train.stage_config import StageConfig
from echo_jax.user_errors import UserError, run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BLOCK_LEN = 4
NEW_TOKENS = 8
OUT_SCALE = 50.0  # attention value/output and MLP down projections
QK_SCALE = 6.0  # query/key projections: sharper attention, so positions matter
TRAIN_STEPS = 60  # the short training run of the trained-weights parity test
TRAIN_LR = 3e-3
TRAINED_NEW_TOKENS = 16


def _peaky(model):
  """Let the layers, not the input embedding, decide each position's greedy token."""
  for layer in model.text.layers:
    attn = layer.self_attn
    for proj, scale in (
      (attn.v_proj, OUT_SCALE),
      (attn.o_proj, OUT_SCALE),
      (layer.mlp.down_proj, OUT_SCALE),
      (attn.q_proj, QK_SCALE),
      (attn.k_proj, QK_SCALE),
    ):
      proj.kernel[...] = proj.kernel[...] * scale


def _save_and_export(setup, tmp_path_factory):
  """A tiny `ar` workdir holding setup.model, exported; (workdir, export directory)."""
  work = tmp_path_factory.mktemp("work")
  manager = ocp.CheckpointManager(
    epath.Path(work) / "checkpoints",
    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
  )
  manager.save(7, args=ocp.args.Composite(model=ocp.args.StandardSave(nnx.state(setup.model))))
  manager.wait_until_finished()
  manager.close()
  saved = {
    "stage": "ar",
    "block_len": BLOCK_LEN,
    "model": {"preset": "tiny"},
    "data": {"path": setup.data_dir, "min_pixels": tiny_vlm.PIXELS, "max_pixels": tiny_vlm.PIXELS},
  }
  (work / "config.json").write_text(json.dumps(saved))
  out = tmp_path_factory.mktemp("export") / "echo_tiny"
  assert export.main(["--checkpoint", str(work), "--out", str(out)]) == str(out)
  return str(work), str(out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  setup = tiny_vlm.make_setup(str(tmp_path_factory.mktemp("data")), seed=5)
  _peaky(setup.model)
  work, out = _save_and_export(setup, tmp_path_factory)
  return setup, work, out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tiny model after a short AR training run on the tiny studies, exported.

  Full-batch Adam on the objective the AR stage trains (train/objectives.py): the losses
  come back so the test can check that the run learned something.
  """
  setup = tiny_vlm.make_setup(str(tmp_path_factory.mktemp("trained_data")), seed=3)
  stage = StageConfig(
    stage="ar",
    tokens=setup.config.tokens,
    block_len=BLOCK_LEN,
    context_len=tiny_vlm.CONTEXT_LEN,
    response_len=tiny_vlm.RESPONSE_LEN,
  )
  loss_fn = objectives.make_loss_fn(stage)
  batch = jax.tree.map(jnp.asarray, stack_examples([setup.example_fn(s) for s in setup.studies]))
  graphdef, params, rest = nnx.split(setup.model, nnx.Param, ...)
  tx = optax.adam(TRAIN_LR)
  opt_state = tx.init(params)

  def loss_of(p):
    return loss_fn(nnx.merge(graphdef, p, rest), batch, jax.random.key(0))[0]

  @jax.jit
  def step(p, state):
    loss, grads = jax.value_and_grad(loss_of)(p)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  losses = []
  for _ in range(TRAIN_STEPS):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  nnx.update(setup.model, params)
  _, out = _save_and_export(setup, tmp_path_factory)
  return setup, losses, out


def _prompt(setup, study):
  patches, grid = images.load_study_images(study.image_paths, setup.example_fn.image_config)
  merge = setup.config.vision.spatial_merge_size
  ids = tokenizer_lib.encode_prompt(
    setup.tokenizer, [images.num_image_tokens(g, merge) for g in grid]
  )
  return ids, patches, grid


def _logits(model, config, ids, patches, grid):
  tokens = ids[None]
  valid = np.ones_like(tokens, bool)
  positions, _ = batch_rope_positions(tokens, [grid], valid, config)
  vision = prepare_vision_inputs([patches], [grid], config.vision, max_patches=len(patches))
  mask = np.tril(np.ones((len(ids), len(ids)), bool))[None]
  return np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask), vision))


def test_config_fields_and_files(exported):
  setup, _, out = exported
  hf = json.loads(open(os.path.join(out, "config.json")).read())
  assert hf["model_type"] == "qwen2_5_vl"
  assert hf["mask_token_id"] == setup.config.tokens.mask == 7
  assert hf["block_length"] == BLOCK_LEN
  gen = json.loads(open(os.path.join(out, "generation_config.json")).read())
  assert gen["eos_token_id"] == setup.config.tokens.eos and gen["do_sample"] is False
  pre = json.loads(open(os.path.join(out, "preprocessor_config.json")).read())
  assert pre["size"] == {"shortest_edge": tiny_vlm.PIXELS, "longest_edge": tiny_vlm.PIXELS}
  # transformers reads the config and the generation config as written.
  config = transformers.AutoConfig.from_pretrained(out)
  assert config.model_type == "qwen2_5_vl" and config.mask_token_id == 7
  assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == 2


def test_round_trip_into_echo_jax_same_logits(exported):
  setup, work, out = exported
  tokenizer = tokenizer_lib.load_tokenizer(runs.find_tokenizer(out, {}))
  assert tokenizer.ids == setup.tokenizer.ids
  back, config = runs.load_model(out, {}, tokenizer)
  assert config.tokens == setup.config.tokens
  assert config.text == setup.config.text and config.vision == setup.config.vision
  ids, patches, grid = _prompt(setup, setup.studies[0])
  want = _logits(setup.model, setup.config, ids, patches, grid)
  got = _logits(back, config, ids, patches, grid)
  np.testing.assert_array_equal(got, want)
  # The block length travels too: a config.json field the loaders read.
  from echo_jax.models import hf_import

  assert hf_import.released_fields(out).block_len == BLOCK_LEN
  assert hf_import.released_fields(out).mask.id == 7


def test_auto_tokenizer_gives_echo_jax_ids(exported):
  setup, _, out = exported
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  ours = setup.tokenizer
  assert hf_tok.mask_token == tokenizer_lib.MASK_TOKEN
  assert hf_tok.mask_token_id == ours.ids.mask
  assert hf_tok.eos_token_id == ours.ids.eos and hf_tok.pad_token_id == ours.ids.pad
  for name, token in tokenizer_lib.TOKEN_NAMES.items():
    assert hf_tok.convert_tokens_to_ids(token) == getattr(ours.ids, name)
  for study in setup.studies[:6]:
    report = study.report
    assert hf_tok(report, add_special_tokens=False).input_ids == ours.encode(report)
    assert hf_tok.decode(ours.encode(report)) == ours.decode(ours.encode(report))
  # The whole prompt with its special tokens and a masked block, as one string.
  ids, _, _ = _prompt(setup, setup.studies[0])
  ids = list(ids) + [ours.ids.mask] * BLOCK_LEN
  text = ours.decode(ids, skip_special_tokens=False)
  assert hf_tok(text, add_special_tokens=False).input_ids == ids
  # The chat template renders echo_jax's prompt (one unexpanded <|image_pad|> per image).
  messages = [
    {
      "role": "user",
      "content": [{"type": "image"}, {"type": "text", "text": tokenizer_lib.ECHO_INSTRUCTION}],
    }
  ]
  rendered = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert rendered == tokenizer_lib.prompt_text(1)


def test_image_processor_matches_echo_jax_patches(exported):
  setup, _, out = exported
  processor = transformers.AutoImageProcessor.from_pretrained(out)
  study = setup.studies[1]
  ours, grid = images.load_study_images(study.image_paths, setup.example_fn.image_config)
  pil = [images.load_image(p) for p in study.image_paths]
  got = processor(images=pil, return_tensors="np")
  np.testing.assert_array_equal(got["image_grid_thw"], grid)
  np.testing.assert_allclose(got["pixel_values"], ours, rtol=0, atol=1e-6)


def test_auto_processor(exported):
  pytest.importorskip("torchvision", reason="transformers' Qwen2.5-VL video processor needs it")
  setup, _, out = exported
  processor = transformers.AutoProcessor.from_pretrained(out)
  assert type(processor).__name__ == "Qwen2_5_VLProcessor"
  study = setup.studies[0]
  messages = [
    {
      "role": "user",
      "content": [{"type": "image"}, {"type": "text", "text": tokenizer_lib.ECHO_INSTRUCTION}],
    }
  ]
  text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  got = processor(
    text=[text], images=[images.load_image(study.image_paths[0])], return_tensors="np"
  )
  ids, patches, _ = _prompt(setup, study)
  np.testing.assert_array_equal(got["input_ids"][0], ids)
  np.testing.assert_array_equal(got["mm_token_type_ids"][0], ids == setup.config.tokens.image_pad)
  np.testing.assert_allclose(got["pixel_values"], patches, rtol=0, atol=1e-6)


def _ar_tokens(setup, studies):
  """echo_jax's greedy AR tokens, NEW_TOKENS per study (the EOS can never be emitted)."""
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=len(studies))
  sampler = make_sampler("ar", setup.config.tokens, max_new_tokens=NEW_TOKENS)
  sampler = dataclasses.replace(sampler, eos_id=setup.config.text.vocab_size)
  _, real, context = next(iter(gen.batches(studies)))
  out, _ = gen.decode(sampler, context)
  return [[int(t) for t in out.tokens_BR[b, :NEW_TOKENS]] for b in range(real)]


def test_transformers_generate_matches_ar_sampler(exported):
  setup, _, out = exported
  hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
    out, dtype=torch.float32
  ).eval()
  studies = setup.studies[:2]
  ours = _ar_tokens(setup, studies)
  assert len({tuple(t) for t in ours}) > 1 and all(len(set(t)) > 1 for t in ours)
  kw = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
  with_types, without = [], []
  for study in studies:
    ids, patches, grid = _prompt(setup, study)
    x = dict(
      input_ids=torch.tensor(ids[None]).long(),
      attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
      pixel_values=torch.tensor(patches),
      image_grid_thw=torch.tensor(grid),
    )
    types = torch.tensor((ids == setup.config.tokens.image_pad)[None]).long()
    with torch.inference_mode():
      with_types.append(hf.generate(**x, mm_token_type_ids=types, **kw)[0, len(ids) :].tolist())
      without.append(hf.generate(**x, **kw)[0, len(ids) :].tolist())
  assert with_types == ours
  # These weights are position-sensitive: 1-D image positions change the greedy tokens
  # (so the equality above tests the 3-D positions, not only the weights).
  assert without != ours


def _until_eos(tokens, eos):
  tokens = list(tokens)
  return tokens[: tokens.index(eos)] if eos in tokens else tokens


def test_transformers_generate_matches_ar_sampler_after_training(trained):
  """Greedy reports of a trained model: transformers' generate of the export equals our AR."""
  setup, losses, out = trained
  assert losses[-1] < 0.7 * losses[0], losses[::10]  # the run learned something
  eos = setup.config.tokens.eos
  studies = setup.studies[:4]
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=len(studies))
  sampler = make_sampler("ar", setup.config.tokens, max_new_tokens=TRAINED_NEW_TOKENS)
  _, real, context = next(iter(gen.batches(studies)))
  decoded, _ = gen.decode(sampler, context)
  ours = [[int(t) for t in decoded.tokens_BR[b, : int(decoded.lengths_B[b])]] for b in range(real)]
  assert all(len(t) > 4 for t in ours)
  hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
    out, dtype=torch.float32
  ).eval()
  theirs = []
  for study in studies:
    ids, patches, grid = _prompt(setup, study)
    with torch.inference_mode():
      generated = hf.generate(
        input_ids=torch.tensor(ids[None]).long(),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
        pixel_values=torch.tensor(patches),
        image_grid_thw=torch.tensor(grid),
        mm_token_type_ids=torch.tensor((ids == setup.config.tokens.image_pad)[None]).long(),
        max_new_tokens=TRAINED_NEW_TOKENS,
        do_sample=False,
      )
    theirs.append(_until_eos(generated[0, len(ids) :].tolist(), eos))
  assert theirs == ours


def test_export_refuses_a_previous_export(exported, capsys):
  _, work, out = exported
  assert run_cli(export.main, ["--checkpoint", work, "--out", out]) == 2
  assert "--overwrite" in capsys.readouterr().err
  with pytest.raises(UserError, match="no such directory"):
    export.main(["--checkpoint", os.path.join(work, "nowhere"), "--out", out + "_2"])


def test_sampling_benchmark_peer_matches_ar_on_these_weights(exported, tmp_path):
  """The benchmark's transformers row decodes what our AR sampler decodes (issue: 0/8)."""
  from echo_jax.bench import hf_peer, sampling

  _, work, _ = exported
  argv = ["--checkpoint", work, "--num_prompts", "2", "--new_tokens", "8", "--repeats", "1"]
  args = sampling._parser().parse_args([*argv, "--pixels", str(tiny_vlm.PIXELS), "--out", "x"])
  setup = sampling.build(args, str(tmp_path / "data"))
  gen = ReportGenerator(setup["model"], setup["tokenizer"], setup["example_fn"], batch_size=1)
  sampler = make_sampler("ar", setup["config"].tokens, max_new_tokens=args.new_tokens)
  sampler = dataclasses.replace(sampler, eos_id=setup["config"].text.vocab_size)
  ours = [r["prediction"] for r in gen.generate(setup["studies"], sampler)]
  peer = hf_peer.Peer(setup, str(tmp_path))
  row = sampling.peer_row(peer, args, len(setup["studies"]))
  assert len(set(ours)) > 1
  assert row["predictions"] == ours
  # Batched, as in the benchmark's sweep: the same reports.
  args.batch_size = 2
  row = sampling.peer_row(peer, args, len(setup["studies"]))
  assert row["batch_size"] == 2 and row["predictions"] == ours


def test_generate_command_decodes_the_export(exported):
  """`python -m echo_jax.generate --checkpoint EXPORT` finds the tokenizer and weights there."""
  from echo_jax import generate

  setup, _, out = exported
  study = setup.studies[2]
  argv = ["--checkpoint", out, "--images", *study.image_paths, "--sampler", "ar"]
  argv += ["--max_new_tokens", "8", "--min_pixels", str(tiny_vlm.PIXELS)]
  argv += ["--max_pixels", str(tiny_vlm.PIXELS), "--context_len", str(tiny_vlm.CONTEXT_LEN)]
  argv += ["--max_patches", "16"]
  rows = generate.main(argv)
  # Without --block_len the export's block length is the decoding profile's.
  assert profiles.profile_for(out, {}).block_len == BLOCK_LEN
  gen = ReportGenerator(setup.model, setup.tokenizer, setup.example_fn, batch_size=1)
  sampler = make_sampler("ar", setup.config.tokens, max_new_tokens=8)
  want = gen.generate([study], sampler)[0]["prediction"]
  assert want and rows[0]["prediction"] == want


def test_export_of_an_export_is_the_same(exported, tmp_path):
  from safetensors.numpy import load_file

  _, _, out = exported
  again = str(tmp_path / "again")
  export.main(["--checkpoint", out, "--out", again])
  for name in ("config.json", "generation_config.json", "preprocessor_config.json"):
    first = json.loads(open(os.path.join(out, name)).read())
    assert json.loads(open(os.path.join(again, name)).read()) == first, name
  first = load_file(os.path.join(out, "model.safetensors"))
  second = load_file(os.path.join(again, "model.safetensors"))
  assert first.keys() == second.keys()
  for name in first:
    np.testing.assert_array_equal(second[name], first[name])
