r"""Character-level flow LM on the complete works of Shakespeare, and its 4-step CFM.

The quickstart (about 15 minutes on a 2-core CPU) runs this config end to end:

  catflow quickstart --workdir=/tmp/catflow_quickstart

The jobs one at a time:

  catflow train    --config=experiments/configs/shakespeare_char.py --workdir=/tmp/sc/base
  catflow distill  --config=experiments/configs/shakespeare_char.py --workdir=/tmp/sc/cfm \
      --config.distill.base_workdir=/tmp/sc/base
  catflow evaluate --config=experiments/configs/shakespeare_char.py --workdir=/tmp/sc/cfm
  catflow sample   --config=experiments/configs/shakespeare_char.py --workdir=/tmp/sc/cfm

Variants (`--config=experiments/configs/shakespeare_char.py:VARIANT`):
  (none)  the quickstart recipe (about 15 minutes on a 2-core CPU);
  local   a tiny model and a few steps, for tests and laptops (about a minute);
  long    the same recipe with a 4.2M-parameter model for about 3 hours:
          catflow quickstart --config=experiments/configs/shakespeare_char.py:long \
              --workdir=workdirs/long
Any field can be overridden, e.g. `--config.num_steps=500 --config.model.num_layers=6`.
"""

import ml_collections


def get_config(arg: str = ""):
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds initialisation, times and noise (folded with the step).

  # Input pipeline (catflow.data.pipeline.DataOptions).
  config.data = ml_collections.ConfigDict()
  config.data.corpus = "shakespeare"  # Registered name, .txt/.jsonl/.parquet path or seqio:TASK.
  config.data.text_field = "text"  # jsonl field / parquet column / seqio feature with the text.
  config.data.import_modules = ""  # Comma-separated modules to import first (seqio tasks).
  config.data.tokenizer = "char"  # char | byte | gpt2_bpe.
  config.data.tokenizer_path = ""  # gpt2_bpe: directory with encoder.json and vocab.bpe.
  config.data.seq_len = 128  # Tokens per packed row.
  config.data.validation_fraction = 0.05  # Held-out share of every work (split="tail").
  config.data.split = "tail"  # tail | documents.
  config.data.seed = 0  # Shuffling seed of the training stream.
  config.data.packing_bins = 0  # First-fit packing bins; 0 = batch size.
  config.data.cache_dir = ""  # "" = $CATFLOW_CACHE_DIR or ~/.cache/catflow.
  config.data.prepared_dir = ""  # Output of `catflow prepare`; "" packs the corpus online.

  # Network (catflow.models.config.ModelConfig); vocab_size 0 = from the tokenizer.
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 0
  config.model.vocab_multiple = 128  # Pad the network's vocabulary to a multiple of this.
  config.model.num_layers = 4
  config.model.embed_dim = 128
  config.model.num_heads = 4
  config.model.head_dim = ml_collections.config_dict.placeholder(int)  # None = embed_dim / heads.
  config.model.mlp_dim = ml_collections.config_dict.placeholder(int)  # None = 4 * embed_dim.
  config.model.mlp_activation = "gelu"  # gelu | swiglu.
  config.model.time_features = 256
  config.model.time_scale = 1000.0
  config.model.two_time = False  # Set by `catflow distill`; keep False here.
  config.model.position_embedding = "rope"  # rope | learned.
  config.model.max_length = 4096  # Learned positions only.
  config.model.rope_base = 10000.0
  config.model.input_scaling = "expected_norm"  # expected_norm | none.
  config.model.input_posterior = False  # Embed softmax(t x / (1 - t)^2) at the input.
  config.model.output_skip = False  # Add t x / (1 - t)^2 to the output logits.
  config.model.modulation = "per_layer"  # adaLN modulation: per_layer | shared.
  config.model.zero_init_blocks = True  # adaLN-Zero initialisation.
  config.model.self_conditioning = False  # Second pass sees the first pass's estimate.
  config.model.learned_loss_weight = False  # Needed by objective.loss_weighting="learned".
  config.model.loss_weight_clip = 5.0
  config.model.causal = False  # True with objective.name="autoregressive": the AR scorer.
  config.model.dtype = "float32"  # Compute dtype: float32 | bfloat16.
  config.model.scan_layers = True
  config.model.remat_policy = "none"  # none | minimal | full | save_attention_and_mlp.
  config.model.attention = "xla"  # xla | dot_product_attention | cudnn.

  # Objective (catflow.objectives.common.ObjectiveOptions).
  config.objective = ml_collections.ConfigDict()
  # base | autoregressive (catflow train); psd | ecld | lsd (set by catflow distill).
  config.objective.name = "base"
  # Training times: tau_uniform | tau_power | t_uniform | logit_normal.
  config.objective.time_distribution = "tau_uniform"
  config.objective.time_power = 0.5  # tau_power: density proportional to (1 - tau)^-time_power.
  config.objective.logit_mean = 0.0
  config.objective.logit_std = 1.0
  config.objective.max_tau = 0.9999
  config.objective.loss_weighting = "none"  # none | power | learned.
  config.objective.weight_power = 0.5  # power: weights (1 - tau)^-weight_power, batch mean 1.
  config.objective.max_weight = 100.0  # power: weight clip before normalisation.
  config.objective.self_conditioning_rate = 0.5  # Training rows that see the first estimate.
  config.objective.projected_input = False  # Exact d-dimensional input shortcut.
  config.objective.diagonal_fraction = 0.25  # Distillation: rows with s = t.
  config.objective.endpoint_fraction = 0.05  # Distillation: rows with (s, t) = (0, 1).
  config.objective.teacher = "student"  # Distillation teacher: student | ema.
  config.objective.ecld_cross_entropy_weight = 1.0  # ECLD: endpoint cross-entropy weight a.
  config.objective.ecld_derivative_weight = 1.0  # ECLD: time-derivative penalty weight b.

  # Optimisation.
  config.batch_size = 32  # Global batch, rows of seq_len tokens.
  config.grad_accum_steps = 1  # Microbatches per update (the batch is split along rows).
  config.num_steps = 1800
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 3e-3  # Peak learning rate (see docs/recipe.md).
  config.optimizer.warmup_steps = 100
  config.optimizer.decay = "cosine"  # cosine | linear | constant.
  config.optimizer.min_learning_rate_ratio = 0.1  # Final rate / peak rate.
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.99
  config.optimizer.eps = 1e-8
  config.optimizer.weight_decay = 0.01
  config.optimizer.grad_clip = 1.0  # Global-norm clipping; 0 disables.
  config.ema_decay = 0.999

  # Mesh: one size per axis, one of them may be -1 (all remaining devices).
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

  # Logging and checkpoints, in steps.
  config.log_every = 50
  config.checkpoint_every = 500
  config.max_checkpoints_to_keep = 2

  # Distillation (`catflow distill`): the base run and the CFM schedule.
  config.distill = ml_collections.ConfigDict()
  config.distill.base_workdir = ""  # Workdir of the `catflow train` run to distil.
  config.distill.base_step = -1  # -1 = the base run's latest checkpoint.
  config.distill.objective = "psd"  # Self-distillation objective: psd | ecld | lsd.
  config.distill.num_steps = 400
  config.distill.learning_rate = 1e-3
  config.distill.warmup_steps = 50

  # Evaluation (`catflow evaluate`): the bound on validation windows.
  config.eval = ml_collections.ConfigDict()
  config.eval.num_windows = 256  # Validation windows scored (0 = all).
  config.eval.batch_size = 32
  config.eval.num_time_samples = 16  # Monte Carlo times per window for the integral.
  config.eval.num_decoder_samples = 1
  config.eval.tau1_grid = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
  config.eval.seed = 0

  # Sampling (`catflow sample` and the quickstart).
  config.sample = ml_collections.ConfigDict()
  config.sample.num_samples = 32
  config.sample.base_steps = 128  # Euler steps of the base model.
  config.sample.cfm_steps = (1, 2, 4)  # Jumps of the CFM.
  config.sample.batch_size = 32
  config.sample.seed = 0

  if arg == "local":
    config.model.num_layers = 2
    config.model.embed_dim = 32
    config.model.num_heads = 2
    config.batch_size = 8
    config.num_steps = 20
    config.optimizer.warmup_steps = 5
    config.log_every = 5
    config.checkpoint_every = 10
    config.distill.num_steps = 10
    config.distill.warmup_steps = 2
    config.eval.num_windows = 16
    config.eval.batch_size = 8
    config.eval.num_time_samples = 4
    config.sample.num_samples = 4
    config.sample.batch_size = 4
    config.sample.base_steps = 8
  elif arg == "long":
    # The same recipe for about 3 hours on a 2-core CPU: a 4.2M-parameter model.
    config.model.num_layers = 6
    config.model.embed_dim = 192
    config.model.num_heads = 6
    config.num_steps = 8000
    config.optimizer.learning_rate = 2e-3  # Scaled by 128 / 192 from the quickstart's 3e-3.
    config.optimizer.warmup_steps = 300
    config.log_every = 100
    config.checkpoint_every = 1000
    config.distill.num_steps = 1500
    config.distill.learning_rate = 7e-4
    config.distill.warmup_steps = 100
    config.eval.num_windows = 512
    config.sample.num_samples = 64
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of shakespeare_char.py; use '', 'local' or 'long'")
  return config
