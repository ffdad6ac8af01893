r"""The 1.7B-parameter base flow LM (GPT-2 BPE, 2048 tokens per row) and its 4-step CFM.

Sized for a TPU pod slice of 256 chips (v5p-512): FSDP over 64 chips x 4-way tensor
parallelism, bf16 compute with float32 master weights and optimizer moments.

Memory and FLOPs without running a step (fake devices, AOT compilation):

  catflow plan --config=experiments/configs/flm_1p7b.py

On the pod (every host runs the same command; see experiments/README.md), with a
bucket mounted at /gcs on every host:

  catflow prepare --config=experiments/configs/flm_1p7b.py --output=/gcs/data/corpus
  experiments/launch_tpu.sh TPU ZONE train --config=experiments/configs/flm_1p7b.py \
      --workdir=/gcs/runs/flm_1p7b --config.data.prepared_dir=/gcs/data/corpus
  experiments/launch_tpu.sh TPU ZONE distill --config=experiments/configs/flm_1p7b.py \
      --workdir=/gcs/runs/flm_1p7b_cfm --config.distill.base_workdir=/gcs/runs/flm_1p7b \
      --config.data.prepared_dir=/gcs/data/corpus

Variants: `local` shrinks the model (same layout) to run on a laptop CPU.
"""

import importlib.util
import pathlib

import ml_collections


def _base_config():
  """Loads the character-level config beside this file; its fields are the defaults here."""
  path = pathlib.Path(__file__).with_name("shakespeare_char.py")
  spec = importlib.util.spec_from_file_location("shakespeare_char", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg: str = ""):
  config = _base_config()

  config.data.corpus = ""  # A registered corpus or path; pods read data.prepared_dir instead.
  config.data.tokenizer = "gpt2_bpe"
  config.data.tokenizer_path = ""  # Directory with encoder.json and vocab.bpe.
  config.data.seq_len = 2048
  config.data.split = "documents"
  config.data.validation_fraction = 0.001

  config.model.vocab_size = 50257  # GPT-2 BPE; padded to 50304.
  config.model.vocab_multiple = 128
  config.model.num_layers = 24
  config.model.embed_dim = 2048
  config.model.num_heads = 16
  config.model.mlp_dim = 7168
  config.model.mlp_activation = "swiglu"
  config.model.modulation = "shared"  # adaLN-single: 6 d^2 once instead of per block.
  config.model.dtype = "bfloat16"
  config.model.scan_layers = True
  config.model.remat_policy = "save_attention_and_mlp"

  config.batch_size = 1024  # Rows of 2048 tokens: 2.1M tokens per step.
  config.num_steps = 1_000_000  # 2.1T tokens.
  config.optimizer.learning_rate = 3e-4
  config.optimizer.warmup_steps = 2000
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.weight_decay = 0.1
  config.optimizer.grad_clip = 1.0
  config.ema_decay = 0.9999
  config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 64, "tensor": 4})
  config.log_every = 100
  config.checkpoint_every = 2000
  config.max_checkpoints_to_keep = 3

  config.distill.num_steps = 50_000
  config.distill.learning_rate = 1e-4
  config.distill.warmup_steps = 1000

  config.eval.num_windows = 2048
  config.sample.cfm_steps = (1, 2, 4, 8)

  if arg == "local":
    config.data.corpus = "shakespeare"
    config.data.seq_len = 128
    config.model.num_layers = 2
    config.model.embed_dim = 64
    config.model.num_heads = 4
    config.model.mlp_dim = 192
    config.model.dtype = "float32"
    config.batch_size = 8
    config.num_steps = 20
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of flm_1p7b.py; use '' or 'local'")
  return config
