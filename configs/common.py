"""Keys shared by every training stage, each with its default and what it means.

Stage files (`ar.py`, `rad.py`, ...; `from configs import common`) start from `base_config()` and change only what
differs. Override any key on the command line with `--config.<key>=<value>`.
"""

from __future__ import annotations

import ast

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """All keys of a training run with CPU-friendly defaults."""
  c = ml_collections.ConfigDict()
  # "vision" = tower pretraining on image labels, "ar" = causal LM,
  # "rad" = block diffusion, "dcd" = one-step distillation
  c.stage = "ar"  # training stage: vision | ar | rad | dcd
  c.preset = "tiny"  # name of the preset this config was built from (reported in logs)
  c.seed = 0  # seeds parameter init, data order and diffusion noise
  # Checkpoints, TensorBoard logs and sample reports; a run resumes from here.
  c.workdir = "workdir/run"  # relative paths are under the current directory

  # Model: a preset of echo_jax.models.presets plus overrides of its numerics.
  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # tiny | small | lingshu-7b
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"  # storage dtype of parameters and optimizer moments
  c.model.remat = False  # rematerialize each block in the backward pass (saves activation memory)

  # Where the initial weights come from ("" = random init).
  c.init = ml_collections.ConfigDict()
  c.init.path = ""  # an echo_jax workdir or checkpoint step, or a Hugging Face directory
  c.init.format = "auto"  # auto | echo | hf ("auto": hf when config.json + *.safetensors)
  # A vision-stage workdir whose trained tower replaces the model's (after init.path).
  c.init.vision_path = ""  # "" = keep the tower of init.path (or the random one)

  # Params whose path holds one of these names get no gradient nor Adam state.
  c.freeze = ()  # e.g. ("vision",): the ViT and the patch merger

  # Device mesh. The product must equal the number of devices; one axis may be -1 (= the rest).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # pure data parallelism (parameters replicated)
  c.mesh.fsdp = 1  # data parallelism with parameters and optimizer state sharded (ZeRO-3)
  c.mesh.tensor = 1  # tensor parallelism over heads / MLP hidden / vocabulary
  # ((logical axis, mesh axis | tuple | None), ...) overriding the sharding defaults.
  c.logical_rules = ()  # () = echo_jax.models.sharding.DEFAULT_RULES

  # Data: the dataset, example layout and the input pipeline.
  c.data = ml_collections.ConfigDict()
  # synthetic | r2gen | mimic-cxr-jpg | chexpert-plus | rexrank | rexgradient | tfds
  # (tfds: a dataset built by echo_jax/data/tfds_builder.py; data.path is its
  # DATA_DIR/echo_cxr/CONFIG/1.0.0)
  c.data.name = "synthetic"  # the dataset reader
  c.data.path = "workdir/synthetic"  # dataset root (synthetic: written here once)
  c.data.images_root = ""  # root of the dataset's relative image paths ("" = the reader's default)
  c.data.num_studies = 2000  # synthetic only: studies generated (split 8/1/1 into train/val/test)
  # "" = the init.path model's tokenizer, or (synthetic) a BPE trained on its reports.
  c.data.tokenizer = ""  # tokenizer.json or its directory
  c.data.min_pixels = 56 * 56  # smallest resized image area (Qwen2.5-VL smart resize)
  c.data.max_pixels = 112 * 112  # largest resized image area (max_pixels / 14**2 patches)
  c.data.context_len = 128  # P: context tokens, left-padded; a multiple of the block length
  c.data.response_len = 96  # R: report + EOS + pad tokens; a multiple of the block length
  c.data.allow_truncation = False  # allow reports longer than response_len (their end is cut)
  c.data.max_patches = 64  # ViT patches per example after padding (multiple of merge**2 = 4)
  c.data.worker_count = 0  # Grain worker processes (0 = load in the main process)
  c.data.worker_buffer_size = 2  # batches each worker prepares ahead

  # Batching and schedule.
  c.batch_size = 16  # global batch (all devices, all accumulation steps together)
  c.grad_accum_steps = 1  # microbatches per optimizer step (batch_size / this per forward)
  c.total_steps = 200  # optimizer steps of the run

  # AdamW with linear warmup then cosine decay, after global-norm gradient clipping.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-3  # peak learning rate
  c.optimizer.warmup_steps = 20  # linear warmup from 0 to the peak
  c.optimizer.end_lr_ratio = 0.1  # final learning rate = end_lr_ratio * peak (cosine end value)
  c.optimizer.b1 = 0.9  # Adam first-moment decay
  c.optimizer.b2 = 0.95  # Adam second-moment decay
  c.optimizer.eps = 1e-8  # Adam epsilon
  c.optimizer.weight_decay = 0.1  # decoupled weight decay on matrices (not on norms and biases)
  c.optimizer.grad_clip = 1.0  # clip the global gradient norm to this (0 = no clipping)

  # Bookkeeping.
  c.log_every = 10  # steps between metric writes
  c.tensorboard = True  # TensorBoard event files (False: console only, no TensorFlow import)
  # 0 = echo_jax/train/mfu.py's table (TPU v4-v6e, A100, H100, H200); a CPU has no
  # entry there, so mfu is logged on a CPU only when this is set.
  c.peak_flops = 0.0  # peak FLOP/s of one device, for the logged mfu
  c.eval_every = 100  # steps between evaluation passes (0 = never)
  c.eval_batches = 4  # batches per evaluation pass (0 = the whole eval split)
  c.checkpoint_every = 100  # steps between checkpoints (the last step is always saved)
  c.keep_checkpoints = 3  # checkpoints kept on disk (older ones are deleted)
  c.async_checkpoint = True  # write checkpoints in a background thread
  c.sample_every = 0  # steps between logging generated sample reports (0 = never)
  c.num_samples = 4  # reports generated per sample pass

  # Stages rad and dcd (the paper uses 4 or 8); stage ar ignores it.
  c.block_len = 8  # B: tokens per block

  # Block diffusion (used by stage "rad").
  c.rad = ml_collections.ConfigDict()
  c.rad.eps = 1e-3  # smallest noise level t (loss weight 1/t <= 1/eps)
  c.rad.per_block_noise = False  # one noise level per block instead of per example
  c.rad.complementary = False  # add the complementary noisy copy (every token trained once)
  # Block lengths drawn per step, e.g. (4, 8): one teacher for students of each B (() = off).
  c.rad.mixed_block_lens = ()  # each must divide context_len and response_len

  # One-step distillation (stage "dcd"): the student's block length is `block_len`.
  c.dcd = ml_collections.ConfigDict()
  c.dcd.teacher_path = ""  # the RAD teacher: an echo_jax workdir or checkpoint step
  c.dcd.threshold = 0.85  # tau of the teacher's multi-step confidence rule
  c.dcd.top_k = 0  # record the teacher's top-k probabilities (0 = the full vocabulary)
  c.dcd.student_prefix = False  # earlier blocks decoded by the student (beyond the paper)
  c.dcd.step_weights = True  # weight positions by their commit step (ablation: False)
  c.dcd.eos_weight = 1.0  # lambda of the EOS cross-entropy (ablation: 0)
  c.dcd.divergence = "forward_kl"  # forward_kl (the paper) | reverse_kl (ablation)
  c.dcd.rad_weight = 0.0  # mix in the RAD loss on the reference reports (0 = off)
  c.dcd.loop_ngram = 8  # discard rollouts repeating an n-gram of this length (0 = never)
  c.dcd.loop_max = 4  # ... more than this many times
  return c


def lingshu_7b(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The settings every 7B stage shares: Lingshu-7B shapes on a real dataset, sharded.

  Sets values only; each key is defined and documented in `base_config`.
  """
  cfg.model.preset = "lingshu-7b"
  cfg.model.dtype = "bfloat16"
  cfg.model.param_dtype = "float32"  # master weights and Adam moments in float32
  cfg.model.remat = True
  cfg.mesh.data = 1
  cfg.mesh.fsdp = -1  # shard parameters and optimizer state over every device
  cfg.mesh.tensor = 1
  cfg.data.name = "r2gen"
  cfg.data.path = ""  # the dataset root holding annotation.json: set --config.data.path
  cfg.data.min_pixels = 256 * 28 * 28  # the released ECHO models' image sizes (docs/RELEASED.md)
  cfg.data.max_pixels = 1500 * 1500
  cfg.data.context_len = 3072  # one image (<= 2,870 vision tokens) plus the prompt
  cfg.data.response_len = 256
  cfg.data.allow_truncation = True  # real reports have a long tail; the few longest are cut
  # One image of max_pixels: 2.25M / 14**2 patches, rounded up to a multiple of 4.
  cfg.data.max_patches = 11480
  cfg.data.worker_count = 8
  cfg.batch_size = 64
  cfg.total_steps = 10_000
  cfg.optimizer.learning_rate = 1e-5
  cfg.optimizer.warmup_steps = 200
  cfg.optimizer.b2 = 0.999
  cfg.optimizer.weight_decay = 0.0
  cfg.eval_every = 1000
  cfg.eval_batches = 0
  cfg.checkpoint_every = 1000
  return cfg


def parse_arg(arg: str | None, *, source: str = "config", **defaults) -> ml_collections.ConfigDict:
  """Parse a big_vision-style config argument "preset,key=value,flag" into a ConfigDict.

  The first bare word is the preset (defaults["preset"] when absent). `key=value` pairs
  take Python literals; a bare word after the preset sets that key to True. Only the keys
  of `defaults` are arguments: any other is an error naming it and `source` (the file).
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  known = ", ".join(k for k in defaults if k != "preset") or "none"
  for i, part in enumerate(p.strip() for p in arg.split(",")):
    if not part:
      continue
    if "=" in part:
      key, value = (s.strip() for s in part.split("=", 1))
      try:
        parsed = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        parsed = value
    elif i == 0:
      key, parsed = "preset", part
    else:
      key, parsed = part, True
    if key not in defaults:
      raise ValueError(f"{source}:{arg}: unknown argument {key!r} (arguments of {source}: {known})")
    out[key] = parsed
  return out
