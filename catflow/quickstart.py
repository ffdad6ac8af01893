"""The main job: train, distil, score and sample a flow LM on the default corpus.

`catflow quickstart --workdir=DIR` runs, in DIR:

1. `base/`: a base flow model trained with the base cross-entropy;
2. `cfm/`: its Categorical Flow Map, distilled with the semigroup objective;
3. the likelihood bound of both on validation windows, beside a unigram model
   of the training split (paired per-window difference with its standard error);
4. samples: validation windows as the data reference, the base model with
   Euler steps, the CFM with 1, 2 and 4 jumps; per-sample unigram entropy and
   the fraction of generated words that occur in the training text;
5. `report.json` and a printed table.

Re-running with the same DIR resumes or reuses finished runs.
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import logging
import ml_collections

from catflow.data import pipeline
from catflow.evaluate import bound
from catflow.evaluate import loading
from catflow.evaluate import samples as samples_lib
from catflow.parallel import mesh as mesh_lib
from catflow.train import distill
from catflow.train import trainer

DEFAULT_CONFIG = "experiments/configs/shakespeare_char.py"


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Runs the whole pipeline in workdir and returns the report (also in report.json)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  timings = {}

  # 1-2. Train the base model, then distil it.
  base_dir, cfm_dir = workdir / "base", workdir / "cfm"
  base_run = trainer.run(config, base_dir, kind="base")
  timings["base_training_seconds"] = time.time() - start
  distill_config = distill.distillation_config(config)
  distill_config.distill.base_workdir = str(base_dir)
  cfm_start = time.time()
  cfm_run = trainer.run(distill_config, cfm_dir, kind="cfm")
  timings["cfm_training_seconds"] = time.time() - cfm_start

  # 3. Likelihood bounds on validation windows.
  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  data_options = pipeline.DataOptions.from_mapping(config.data.to_dict())
  seq_len = data_options.seq_len
  base_model = loading.load(base_dir, mesh, seq_len=seq_len)
  cfm_model = loading.load(cfm_dir, mesh, seq_len=seq_len)
  corpus = pipeline.load_tokenized(data_options, tokenizer=base_model.tokenizer)
  eval_start = time.time()
  base_bound = bound.evaluate_run(base_model, corpus, data_options, config.eval)
  cfm_bound = bound.evaluate_run(cfm_model, corpus, data_options, config.eval)
  timings["evaluation_seconds"] = time.time() - eval_start

  # 4. Samples and their metrics.
  sample_config = config.sample
  vocabulary = samples_lib.word_vocabulary(corpus.train_text)
  tokenizer = base_model.tokenizer
  reference_start = time.time()
  reference = pipeline.validation_windows(corpus, data_options,
                                          max_windows=int(sample_config.num_samples))
  reference_rows = [row[segments > 0] for row, segments in
                    zip(reference["tokens"], reference["segment_ids"])]
  sample_reports = [samples_lib.report_for("validation windows", None, reference_rows, tokenizer,
                                           vocabulary, time.time() - reference_start)]
  runs = [("base model (Euler)", base_model, int(sample_config.base_steps))]
  runs += [("CFM", cfm_model, int(steps)) for steps in sample_config.cfm_steps]
  for source, model, steps in runs:
    tokens, seconds = samples_lib.generate(
        model, num_samples=int(sample_config.num_samples), num_steps=steps, length=seq_len,
        seed=int(sample_config.seed), batch_size=int(sample_config.batch_size))
    sample_reports.append(samples_lib.report_for(source, steps, list(tokens), tokenizer,
                                                 vocabulary, seconds))

  # 5. The report.
  counts = corpus.unigram_counts()
  report = {
      "corpus": {
          "name": corpus.name,
          "tokenizer": tokenizer.identity(),
          "train_tokens": corpus.num_train_tokens,
          "validation_tokens": corpus.num_validation_tokens,
          "unigram_entropy_bits_per_token": bound.unigram_entropy_bits(counts),
      },
      "base": {"steps": base_run.step, "bound": base_bound},
      "cfm": {"steps": cfm_run.step, "base_steps": base_run.step, "bound": cfm_bound},
      "samples": [report.summary() for report in sample_reports],
      "timings": {**timings, "total_seconds": time.time() - start},
      "config": json.loads(config.to_json_best_effort()),
  }
  (workdir / "report.json").write_text(json.dumps(report, indent=2))
  logging.info("Quickstart finished in %.1f s; report at %s", report["timings"]["total_seconds"],
               workdir / "report.json")
  return report


def format_report(report: dict) -> str:
  """Renders the report as a plain-text table."""
  corpus = report["corpus"]
  lines = [
      f"corpus: {corpus['name']}   tokenizer: {corpus['tokenizer']['name']} "
      f"({corpus['tokenizer']['vocab_size']} ids)",
      f"train tokens: {corpus['train_tokens']:,}   validation tokens: "
      f"{corpus['validation_tokens']:,}   unigram entropy: "
      f"{corpus['unigram_entropy_bits_per_token']:.3f} bits/token",
      "",
      f"{'model':<6} {'steps':>6} {'bound bits/char':>18} {'unigram bits/char':>18} "
      f"{'bound - unigram':>22}",
  ]
  for name in ("base", "cfm"):
    entry = report[name]["bound"]
    unigram = entry["unigram"]
    lines.append(
        f"{name:<6} {report[name]['steps']:>6} "
        f"{entry['bits_per_character']:>10.3f} +- {entry['bits_per_character_stderr']:.3f} "
        f"{unigram['bits_per_character']:>18.3f} "
        f"{unigram['difference_bits_per_character']:>+10.3f} +- {unigram['difference_stderr']:.3f}"
        f" ({unigram['difference_in_stderrs']:+.1f} SE)")
  lines += ["", f"{'samples':<22} {'steps':>5} {'n':>4} {'entropy (nats)':>15} "
                f"{'word fraction':>14} {'wall s':>8}"]
  for entry in report["samples"]:
    steps = "-" if entry["steps"] is None else str(entry["steps"])
    lines.append(f"{entry['source']:<22} {steps:>5} {entry['num_samples']:>4} "
                 f"{entry['mean_unigram_entropy_nats']:>15.3f} {entry['word_fraction']:>14.3f} "
                 f"{entry['wall_seconds']:>8.1f}")
  lines.append("")
  for entry in report["samples"]:
    label = entry["source"] + ("" if entry["steps"] is None else f", {entry['steps']} steps")
    example = entry["examples"][0] if entry["examples"] else ""
    lines.append(f"[{label}]\n{example}\n")
  lines.append(f"total time: {report['timings']['total_seconds']:.0f} s")
  return "\n".join(lines)
