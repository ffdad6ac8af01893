r"""Runs rows of the training-recipe search at equal compute and tabulates them.

  python experiments/recipe_search.py --rows=tau_uniform,input_posterior --steps=400 \
      --output_dir=/tmp/recipe_search

Every row trains a base model on the default corpus with the quickstart config
plus the row's overrides, for the same number of steps, then records:
- the likelihood bound on validation windows (bits/char, standard error) and
  its paired per-window difference to the unigram model of the training text;
- the mean per-sample unigram entropy and the word fraction of 32 samples
  (128 Euler steps);
- the learning curve (training loss per logged step).

Results go to OUTPUT_DIR/results.jsonl (one line per row) and a learning-curve
plot OUTPUT_DIR/curves.png (needs matplotlib: `pip install -e ".[plots]"`).
Each row is the same as

  catflow train --config=experiments/configs/shakespeare_char.py --workdir=DIR \
      --config.num_steps=STEPS OVERRIDES...
  catflow evaluate --config=experiments/configs/shakespeare_char.py --workdir=DIR OVERRIDES...
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import time

from absl import app
from absl import flags
from absl import logging

from catflow.data import pipeline
from catflow.evaluate import bound
from catflow.evaluate import loading
from catflow.evaluate import samples
from catflow.parallel import mesh as mesh_lib
from catflow.train import trainer

_CONFIG = pathlib.Path(__file__).parent / "configs" / "shakespeare_char.py"

# name -> (what the row changes, config overrides).
ROWS: dict[str, tuple[str, dict]] = {
    "tau_uniform": ("times uniform in tau, plain cross-entropy", {}),
    "input_posterior": ("adds an embedding of softmax(t x / (1 - t)^2) at the input",
                        {"model.input_posterior": True}),
    "output_skip": ("adds t x / (1 - t)^2 to the output logits", {"model.output_skip": True}),
    "tau_power_0.5_weight_0.5": (
        "tau density (1 - tau)^-0.5, weights (1 - tau)^-0.5",
        {"objective.time_distribution": "tau_power", "objective.time_power": 0.5,
         "objective.loss_weighting": "power", "objective.weight_power": 0.5}),
    "weight_1": ("tau uniform, weights (1 - tau)^-1",
                 {"objective.loss_weighting": "power", "objective.weight_power": 1.0}),
    "tau_power_1": ("tau uniform in log(1 - tau), no weights",
                    {"objective.time_distribution": "tau_power", "objective.time_power": 1.0}),
    "learned_weight": ("learned log-variance weighting w = exp(-u) CE + u",
                       {"model.learned_loss_weight": True, "objective.loss_weighting": "learned"}),
    "t_uniform": ("times uniform in t", {"objective.time_distribution": "t_uniform"}),
}

flags.DEFINE_list("rows", list(ROWS), "Rows to run, by name.")
flags.DEFINE_integer("steps", 400, "Training steps of every row.")
flags.DEFINE_string("output_dir", "/tmp/recipe_search", "Where runs and results go.")
flags.DEFINE_integer("eval_windows", 128, "Validation windows for the bound.")
flags.DEFINE_integer("num_samples", 32, "Samples for entropy and word fraction.")
flags.DEFINE_multi_string("override", [], "Extra KEY=VALUE overrides applied to every row.")


def load_config():
  spec = importlib.util.spec_from_file_location("shakespeare_char", _CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_overrides(config, overrides: dict):
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value


def parse_override(text: str) -> tuple[str, object]:
  key, _, value = text.partition("=")
  try:
    return key, json.loads(value)
  except json.JSONDecodeError:
    return key, value


def run_row(name: str, output_dir: pathlib.Path) -> dict:
  description, overrides = ROWS[name]
  overrides = dict(overrides, **dict(parse_override(text) for text in flags.FLAGS.override))
  config = load_config()
  config.num_steps = flags.FLAGS.steps
  config.log_every = 50
  config.checkpoint_every = flags.FLAGS.steps
  config.eval.num_windows = flags.FLAGS.eval_windows
  apply_overrides(config, overrides)
  workdir = output_dir / name

  start = time.time()
  trainer.run(config, workdir, kind="base")
  train_seconds = time.time() - start

  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  data_options = pipeline.DataOptions.from_mapping(config.data.to_dict())
  loaded = loading.load(workdir, mesh, seq_len=data_options.seq_len)
  corpus = pipeline.load_tokenized(data_options, tokenizer=loaded.tokenizer)
  summary = bound.evaluate_run(loaded, corpus, data_options, config.eval)
  tokens, sample_seconds = samples.generate(
      loaded, num_samples=flags.FLAGS.num_samples, num_steps=int(config.sample.base_steps),
      length=data_options.seq_len, seed=0, batch_size=flags.FLAGS.num_samples)
  report = samples.report_for("base", int(config.sample.base_steps), list(tokens),
                              loaded.tokenizer, samples.word_vocabulary(corpus.train_text),
                              sample_seconds)
  curve = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  flags_text = " ".join(f"--config.{key}={value}" for key, value in overrides.items())
  return {
      "row": name,
      "description": description,
      "steps": flags.FLAGS.steps,
      "command": (f"catflow train --config=experiments/configs/shakespeare_char.py "
                  f"--workdir=DIR --config.num_steps={flags.FLAGS.steps} {flags_text}").strip(),
      "train_seconds": train_seconds,
      "bound_bits_per_char": summary["bits_per_character"],
      "bound_stderr": summary["bits_per_character_stderr"],
      "unigram_bits_per_char": summary["unigram"]["bits_per_character"],
      "difference_bits_per_char": summary["unigram"]["difference_bits_per_character"],
      "difference_stderr": summary["unigram"]["difference_stderr"],
      "best_tau1": summary["best_tau1"],
      "sample_entropy_nats": report.summary()["mean_unigram_entropy_nats"],
      "word_fraction": report.word_fraction,
      "sample_example": report.texts[0][:160],
      "curve": [(entry["step"], entry["loss"]) for entry in curve],
  }


def plot_curves(results: list[dict], path: pathlib.Path):
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    logging.warning("matplotlib is not installed; skipping %s (pip install -e '.[plots]')", path)
    return
  figure, axis = plt.subplots(figsize=(7, 4))
  for result in results:
    steps, losses = zip(*result["curve"])
    axis.plot(steps, losses, label=result["row"])
  axis.set_xlabel("step")
  axis.set_ylabel("training loss (nats/token)")
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def main(argv):
  del argv
  output_dir = pathlib.Path(flags.FLAGS.output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  unknown = [name for name in flags.FLAGS.rows if name not in ROWS]
  if unknown:
    raise app.UsageError(f"unknown rows {unknown}; known rows are {sorted(ROWS)}")
  results = []
  for name in flags.FLAGS.rows:
    result = run_row(name, output_dir)
    results.append(result)
    with (output_dir / "results.jsonl").open("a") as handle:
      handle.write(json.dumps(result) + "\n")
    print(f"{name}: {result['bound_bits_per_char']:.3f} +- {result['bound_stderr']:.3f} bits/char, "
          f"bound - unigram {result['difference_bits_per_char']:+.3f} +- "
          f"{result['difference_stderr']:.3f}, word fraction {result['word_fraction']:.3f}, "
          f"entropy {result['sample_entropy_nats']:.3f}")
  plot_curves(results, output_dir / "curves.png")


if __name__ == "__main__":
  app.run(main)
