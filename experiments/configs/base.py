"""Defaults shared by every config; a config file imports this and changes what differs.

Every field can be overridden on the command line as ``--config.a.b=value``.
"""

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # causal_lm | masked_lm | span_corruption | classification (models/objectives)
  c.task = "causal_lm"
  c.seed = 0
  c.steps = 100
  c.batch_size = 16  # global sequences per step
  c.seq_len = 128
  c.microbatches = 1  # gradient accumulation: the batch is split into this many parts
  c.log_every = 10
  c.log_layer_norms = False  # per-layer-group norms of params, grads and updates
  # Seeds trained together in one compiled step (vmap over params and RNG; member i uses
  # seed + i for its init and dropout; all see the same batches): loss rows gain loss_std.
  c.ensemble = 1
  c.checkpoint_every = 100  # steps between Orbax checkpoints (one is always taken at the end)
  c.keep_checkpoints = 3  # the newest this many are kept
  c.checkpoint_steps = ()  # extra steps to checkpoint at (e.g. WSD branch points)
  # Start a new run from another run (train/init_from.py). <workdir>/checkpoints/<step>: a
  # branch, the whole state continues (params, optimizer, step, RNG, data position; how WSD
  # branches are made). <workdir> or <workdir>:<step>: parameters only, matched by name and
  # shape (a new head stays freshly initialized); optimizer, step and data start afresh.
  c.init_from = config_dict.placeholder(str)
  # Fine-tuning (train/finetune.py). Frozen parameters get no update at all. trainable: a
  # regex searched in parameter paths (layers/attention/query_kernel, classifier/kernel);
  # trainable_roles: comma-separated roles (embedding, readout, hidden, vector); a parameter
  # trains when it passes every filter set (None: all train). lora.rank > 0: adapters W +
  # (alpha / rank) A B on the hidden matrices lora.targets matches (None: attention and MLP
  # kernels), the base frozen; merge with `python -m isoflop.experiments.merge_lora`.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.trainable = config_dict.placeholder(str)
  c.finetune.trainable_roles = config_dict.placeholder(str)
  c.finetune.lora = ml_collections.ConfigDict()
  c.finetune.lora.rank = config_dict.placeholder(int)  # None: no LoRA
  c.finetune.lora.alpha = 16.0
  c.finetune.lora.targets = config_dict.placeholder(str)
  c.eval_every = 0  # steps between held-out evaluations (eval_loss rows); 0 = off
  c.eval_batches = 4  # batches of held-out data per evaluation
  c.eval_by_position = False  # causal_lm: also eval_loss_by_position (a list, one per position)

  # Masked LM (task=masked_lm, model.family=encoder): BERT's recipe. mask_rate of the tokens
  # are selected (the loss covers them alone); of those, replace_rates = (mask, random, keep)
  # are replaced by <mask>, by a random token, or left unchanged.
  c.masked_lm = ml_collections.ConfigDict()
  c.masked_lm.mask_rate = 0.15
  c.masked_lm.replace_rates = (0.8, 0.1, 0.1)
  # Span corruption (task=span_corruption, model.family=encdec): T5's objective. Spans of mean
  # length mean_span_length cover noise_density of the raw tokens; each becomes one sentinel
  # in the encoder input (seq_len tokens) and the targets are the sentinels with their spans
  # (target_len tokens; None: the exact length the layout needs).
  c.span_corruption = ml_collections.ConfigDict()
  c.span_corruption.noise_density = 0.15
  c.span_corruption.mean_span_length = 3.0
  c.span_corruption.target_len = config_dict.placeholder(int)
  c.span_corruption.num_sentinels = 100  # T5's extra_ids: at most this many spans a sequence
  # Classification (task=classification): images (the vision families) or text (a language
  # model with model.num_classes, e.g. on data.source=shakespeare_plays).
  c.classification = ml_collections.ConfigDict()
  c.classification.label_smoothing = 0.0  # the target puts this much mass uniformly on classes

  # Pruning during training (train/compression/pruning.py): magnitude (one shot at
  # start_step), gradual (Zhu & Gupta's cubic schedule from start_step to end_step, every
  # `every` steps) or nm (N:M structured, n of every m along a matrix's input dimension).
  c.prune = ml_collections.ConfigDict()
  c.prune.method = config_dict.placeholder(str)  # None: no pruning
  c.prune.sparsity = 0.5  # final fraction of the selected weights set to zero (not nm)
  c.prune.n = 2
  c.prune.m = 4
  c.prune.start_step = 0
  c.prune.end_step = config_dict.placeholder(int)  # gradual: where the final sparsity is reached
  c.prune.every = 10  # gradual: steps between mask updates
  # When set: start_step / end_step at these fractions of `steps` (sweeps of varied lengths)
  c.prune.start_fraction = config_dict.placeholder(float)
  c.prune.end_fraction = config_dict.placeholder(float)
  c.prune.scope = "layer"  # layer: each matrix (each layer of it) on its own | global
  c.prune.roles = ("hidden",)  # parameter roles pruned: hidden, readout

  # Quantization with Qwix (train/compression/quantization.py): qat trains with fake-quantized
  # weights (straight-through gradients); weight_only and w8a8 are post-training
  # (`isoflop compress --method=quantize`).
  c.quant = ml_collections.ConfigDict()
  c.quant.bits = config_dict.placeholder(int)  # None: off | 8 | 4
  c.quant.mode = "weight_only"  # weight_only | w8a8 | qat
  c.quant.tile_size = config_dict.placeholder(int)  # None: per channel; n: a scale per n inputs
  c.quant.act_bits = config_dict.placeholder(int)  # qat: also fake-quantize activations (8)
  # Low-rank factorization (train/compression/lowrank.py, `isoflop compress --method=lowrank`):
  # each hidden kernel W -> U V from its truncated SVD; set one of these.
  c.lowrank = ml_collections.ConfigDict()
  c.lowrank.rank_fraction = config_dict.placeholder(float)  # r = fraction x min(d_in, d_out)
  c.lowrank.energy = config_dict.placeholder(float)  # smallest r keeping this spectral energy
  c.lowrank.rank = config_dict.placeholder(int)  # one rank for every kernel
  # Distillation (train/compression/distillation.py): a trained run of any family with this
  # run's task and vocabulary teaches: alpha * CE + (1 - alpha) * T^2 * KL(teacher_T||student_T).
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = config_dict.placeholder(str)  # <workdir>[:<step>]; None: no teacher
  c.distill.alpha = 0.5
  c.distill.temperature = 2.0

  c.model = ml_collections.ConfigDict()
  m = c.model
  # decoder | lstm | encoder | encdec (models/families.py); another family's config file
  # replaces this block
  m.family = "decoder"
  m.vocab_size = 256
  # Pad the token table and readout to a multiple (e.g. 128: GPT-2's 50,257 then splits over
  # tensor parallelism and its matmuls align); padded logits are masked out of the loss, and
  # N and the analytic FLOPs count the real vocabulary (config.json: param_counts_padded).
  m.vocab_pad_multiple = 1
  m.d_model = 128
  m.n_layers = 2
  m.n_heads = 4
  m.n_kv_heads = config_dict.placeholder(int)  # None: = n_heads
  m.d_head = config_dict.placeholder(int)  # None: = d_model // n_heads
  m.d_ff = config_dict.placeholder(int)  # None: = 4 * d_model
  m.max_len = config_dict.placeholder(int)  # None: = seq_len (positions the model can take)
  m.positions = "learned"  # learned | rope | none
  m.rope_theta = 10_000.0
  m.norm = "layernorm"  # layernorm | rmsnorm
  m.norm_eps = 1e-5
  m.activation = "gelu"  # gelu relu silu tanh sigmoid | swiglu geglu reglu tanhglu glu
  m.use_bias = True
  m.tie_embeddings = True
  m.dropout = 0.0
  m.attention = "xla"  # xla | cudnn
  # Stabilizers (Wortsman et al. 2023; Gemma 2): normalize queries and keys per head; logits
  # soft-capped at c, c tanh(x / c), in attention and at the readout (0: off)
  m.qk_norm = False
  m.attn_logit_softcap = 0.0
  m.final_logit_softcap = 0.0
  m.remat = "none"  # none | full | dots | dots_no_batch
  m.scan_unroll = 1
  m.init_std = 0.02
  m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay in param_dtype)
  m.param_dtype = "float32"
  m.parametrization = "sp"  # sp | mup (models/mup.py)
  m.mup_base_width = config_dict.placeholder(int)  # mup: the width tuned at; None = d_model
  # mup: the base model's head size, for attention's sqrt(base d_head) / d_head; None = heads of
  # a fixed size (n_heads grows with d_model), where that equals SP's 1/sqrt(d_head).
  m.mup_base_head_dim = config_dict.placeholder(int)
  m.mup_zero_readout = False  # mup: True starts the readout at zero (Yang et al. 2022)
  # Mixture of experts (models/moe.py): 0 experts = dense MLPs.
  m.num_experts = 0
  m.experts_per_token = 2  # k: routed experts per token (top-k of a softmax router)
  m.moe_every = 1  # every n-th layer routes (n_layers divisible by n)
  m.capacity_factor = 1.25  # slots per expert per sequence = ceil(cf * k * L / E); 0: no limit
  m.shared_experts = 0  # always-active experts of the expert width
  m.expert_d_ff = config_dict.placeholder(int)  # None: d_ff (fine-grained: d_ff / G)
  m.router_aux_loss = 0.01  # coefficient of the Switch load-balancing loss
  m.router_z_loss = 0.001  # coefficient of the router z-loss
  # task=classification over text: a fresh head of this many classes on the last real token
  # (models/classifier.py); None: the LM head
  m.num_classes = config_dict.placeholder(int)

  c.optimizer = ml_collections.ConfigDict()
  o = c.optimizer
  o.name = "adamw"  # sgd momentum nesterov adagrad rmsprop adam adamw adafactor lion
  o.lr = 1e-3
  o.schedule = "cosine"  # constant cosine linear wsd inverse_sqrt (all with linear warmup)
  o.warmup_steps = 10
  o.min_lr_ratio = 0.1
  o.decay_fraction = 0.2  # wsd: share of the run spent decaying
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.momentum = 0.9
  o.weight_decay = 0.1  # masked off norms and biases
  # True: p -= (lr_t / lr) * weight_decay * p, not scaled by the learning rate's size (Wortsman
  # et al. 2023); weight_decay then means the decay per step at the peak (e.g. 1e-4)
  o.independent_weight_decay = False
  o.clip_norm = 1.0  # global-norm clipping; 0 turns it off

  # DP-SGD (train/privacy.py): per-example clipping to clip_norm, Gaussian noise of std
  # noise_multiplier * clip_norm; dp_epsilon (at delta) logged by dp-accounting's RDP accountant.
  c.privacy = ml_collections.ConfigDict()
  c.privacy.noise_multiplier = config_dict.placeholder(float)  # None: off; 0: clipping only
  c.privacy.clip_norm = 1.0
  c.privacy.delta = 1e-5
  c.privacy.sampling = "shuffled"  # fixed-size batches of the shuffled stream (see privacy.py)

  # Loss-spike rollback (train/spikes.py): a step whose loss exceeds the last good one by
  # spike_sigmas standard deviations of the step-to-step noise (and by spike_min_relative) rolls the
  # run back to the last checkpoint before it and skips the batches since, at most
  # spike_max_rollbacks times; events in spikes.json and metrics.jsonl.
  c.stability = ml_collections.ConfigDict()
  c.stability.spike_sigmas = config_dict.placeholder(float)  # None: off
  c.stability.spike_min_relative = 0.1
  c.stability.spike_ema = 0.95  # decay of the running noise estimate, per step
  c.stability.spike_warmup_steps = 100  # steps before any spike is called
  c.stability.spike_max_rollbacks = 3
  c.stability.spike_skip_extra = 0  # batches skipped beyond those since the checkpoint

  # DiLoCo (train/diloco.py): replicas copies of the model on a replica mesh axis, each taking
  # inner_steps steps of the optimizer above on its part of the batch between outer steps.
  c.diloco = ml_collections.ConfigDict()
  c.diloco.replicas = config_dict.placeholder(int)  # None: off
  c.diloco.inner_steps = 50
  c.diloco.outer_optimizer = "nesterov"  # nesterov | sgd
  c.diloco.outer_lr = 0.7
  c.diloco.outer_momentum = 0.9

  c.loss = ml_collections.ConfigDict()
  c.loss.z_loss = 0.0
  c.loss.l1 = 0.0  # penalties on the weight-decayed parameters
  c.loss.l2 = 0.0

  c.data = ml_collections.ConfigDict()
  d = c.data
  # synthetic:markov | synthetic:uniform | synthetic:ngram | shakespeare | files:<glob>
  # | tfds:<name>[/<config>][:<version>] | digits | shakespeare_plays (passages labelled by
  # play, held out by scene; task=causal_lm reads the training scenes' text)
  d.source = "synthetic:markov"
  # text sources: bytes (vocab 256) | sentencepiece (vocab data.vocab_size) | hf (the
  # tokenizer.json at data.tokenizer_path)
  d.tokenizer = "bytes"
  # sentencepiece: its vocabulary size; hf: the model's vocabulary if larger than the tokenizer's
  d.vocab_size = config_dict.placeholder(int)
  # data.tokenizer=hf: a tokenizer.json, or a directory with one (a Hugging Face checkpoint, a
  # run made by `isoflop convert --from_hf`); a resumed run reads its own saved copy
  d.tokenizer_path = config_dict.placeholder(str)
  d.branching = 8  # synthetic: successors per context
  d.zipf = 1.0  # synthetic: Zipf exponent of the successor probabilities
  d.max_order = 3  # synthetic:ngram: contexts of 1..max_order previous tokens
  d.one_document_per_line = False  # files: each non-empty line is a document
  d.tfds_split = "train"
  d.tfds_data_dir = config_dict.placeholder(str)  # None: TFDS's default
  d.text_key = "text"  # tfds: the text feature
  d.max_documents = config_dict.placeholder(int)  # tfds: read at most this many documents
  d.eval_fraction = 0.05  # text/images: share of documents held out for eval_loss
  d.normalize = False  # images: standardize each channel by the training split's mean and std
  # tfds images: read on demand and fitted to model.image_size (automatic for images of
  # varying size or over 1 GiB, e.g. imagenet2012); False holds small datasets in memory
  d.stream_images = False
  # Images, training batches only (train/data/images.py); deterministic by seed and step.
  d.augment = ml_collections.ConfigDict()
  d.augment.crop_padding = 0  # random crop of the image zero-padded by this many pixels
  d.augment.flip = False  # random horizontal flips
  d.augment.mixup_alpha = 0.0  # mixup with weights from Beta(alpha, alpha); 0: off
  d.document_masking = False  # packed documents: attention stays within each document
  d.max_epochs = config_dict.placeholder(float)  # refuse runs that repeat the data more
  d.cache_dir = config_dict.placeholder(str)  # token cache; None: $ISOFLOP_CACHE_DIR or ~/.cache

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 fills the devices left over by the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.expert = 1  # expert parallelism: experts (and, outside them, the batch) split here
  c.mesh.rules = "fsdp_tensor"  # fsdp_tensor | replicated (sharding/rules.py)

  # Weights & Biases mirror of metrics.jsonl (train/wandb_log.py); needs isoflop[wandb].
  c.wandb = ml_collections.ConfigDict()
  c.wandb.project = config_dict.placeholder(str)  # None: W&B off (and wandb not imported)
  c.wandb.entity = config_dict.placeholder(str)  # None: the W&B account's default
  c.wandb.mode = "online"  # online | offline (sync later with `wandb sync`) | disabled
  c.wandb.group = config_dict.placeholder(str)  # None: $ISOFLOP_SWEEP_NAME (a sweep's members)
  c.wandb.name = config_dict.placeholder(str)  # None: the workdir's name
  return c


def family_model_block(family: str, config_class: type, **values) -> ml_collections.ConfigDict:
  """A ``c.model`` block for another family: ``family`` and every field of its config
  dataclass at its default (``None`` defaults become typed placeholders, so the command line
  can set them), then ``values``. A family's config file assigns it to ``c.model``."""
  block = ml_collections.ConfigDict()
  block.family = family
  fields = {f.name: f for f in dataclasses.fields(config_class)}
  unknown = set(values) - set(fields)
  if unknown:
    raise ValueError(f"{sorted(unknown)} are not fields of {config_class.__name__}")

  def placeholder(field):
    kinds = [t for t in typing.get_args(field.type) if t is not type(None)]
    kind = kinds[0] if kinds else field.type if isinstance(field.type, type) else object
    return config_dict.placeholder(kind)

  for name, field in fields.items():
    value = values.get(name, field.default)
    # None (a derived default, e.g. max_len = seq_len) stays settable from the command line
    setattr(block, name, placeholder(field) if value is None else value)
  return block
