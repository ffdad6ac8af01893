"""`catflow evaluate`: every evaluation of one checkpoint, in one results file.

Suites (any combination):
- bound: the likelihood bound on the validation windows of the training corpus,
  beside a unigram model (nats and bits per token and per character);
- perplexity: PTB and WikiText-2 (or any .txt files) with the bound;
- benchmarks: LAMBADA, PIQA, HellaSwag, ARC-E/C, WinoGrande, OpenBookQA, SIQA,
  BoolQ, COPA, each choice scored by the bound on its continuation;
- genppl: samples of the model scored by a causal LM (a catflow autoregressive
  model or a Hugging Face model from a local directory), next to their
  per-sample unigram entropy.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import numpy as np

from catflow.data import pipeline
from catflow.evaluate import bound
from catflow.evaluate import genppl
from catflow.evaluate import loading
from catflow.evaluate import samples
from catflow.evaluate import suites
from catflow.evaluate import task_files
from catflow.evaluate import tasks

SUITES = ("bound", "perplexity", "benchmarks", "genppl")
PERPLEXITY_SETS = ("ptb_test", "ptb_valid", "wikitext2_test", "wikitext2_valid")


@dataclasses.dataclass
class EvaluationOptions:
  """What `catflow evaluate` runs beyond the config's eval block."""

  suites: Sequence[str] = ("bound",)
  perplexity_sets: Sequence[str] = PERPLEXITY_SETS
  block_size: int = 0  # Perplexity windows; 0 means data.seq_len.
  stride: int = 0  # Perplexity window step; 0 means block_size (disjoint windows, a true bound).
  benchmarks: Sequence[str] = tuple(task_files.TASKS)
  benchmark_limit: int = 0  # Items per benchmark; 0 means all.
  # Tokens per benchmark request (context truncated from the left); 0 means
  # max(data.seq_len, 512), so that character-level models fit the longer continuations.
  benchmark_max_length: int = 0
  benchmark_tau1: float = 0.95
  greedy_steps: int = 32  # LAMBADA greedy decoding steps.
  scorer_workdir: str = ""  # Workdir of a catflow autoregressive model for genppl.
  hf_scorer_dir: str = ""  # Local Hugging Face causal LM for genppl.
  genppl_steps: int = 0  # Sampling steps for genppl; 0 means config.sample defaults.
  data_dir: str = ""  # Benchmark and perplexity files; "" means $CATFLOW_DATA_DIR.

  def __post_init__(self):
    unknown = sorted(set(self.suites) - set(SUITES))
    if unknown:
      raise ValueError(f"unknown suites {unknown}; choose from {SUITES}")
    unknown = sorted(set(self.benchmarks) - set(task_files.TASKS))
    if unknown:
      raise ValueError(f"unknown benchmarks {unknown}; choose from {sorted(task_files.TASKS)}")


def run(config, loaded: loading.LoadedModel, options: EvaluationOptions) -> dict:
  """Runs the requested suites on a loaded model and returns the results."""
  start = time.time()
  data_options = pipeline.DataOptions.from_mapping(config.data.to_dict())
  eval_config = config.eval
  data_dir = options.data_dir or os.environ.get(task_files.DATA_DIR_ENV) or None
  results = {
      "model": {"workdir": str(loaded.workdir), "kind": loaded.kind, "step": loaded.step,
                "tokenizer": loaded.tokenizer.identity(),
                "model_config": loaded.model_config.to_dict()},
      "config": loaded.meta.get("config"),
      "seeds": {"eval": int(eval_config.seed), "sample": int(config.sample.seed)},
      "num_time_samples": int(eval_config.num_time_samples),
  }
  bound_options = bound.bound_options_from(eval_config, loaded.kind)

  if "bound" in options.suites:
    corpus = pipeline.load_tokenized(data_options, tokenizer=loaded.tokenizer)
    results["bound"] = bound.evaluate_run(loaded, corpus, data_options, eval_config)

  if "perplexity" in options.suites:
    block_size = options.block_size or data_options.seq_len
    stride = options.stride or block_size
    results["perplexity"] = {
        name: suites.perplexity(loaded, name, block_size=block_size, stride=stride,
                                options=bound_options, seed=int(eval_config.seed),
                                batch_size=int(eval_config.batch_size), data_dir=data_dir)
        for name in options.perplexity_sets}

  if "benchmarks" in options.suites:
    max_length = options.benchmark_max_length or max(data_options.seq_len, 512)
    results["benchmarks"] = {
        name: suites.benchmark(loaded, name, max_length=max_length, tau1=options.benchmark_tau1,
                               num_time_samples=int(eval_config.num_time_samples),
                               seed=int(eval_config.seed), batch_size=int(eval_config.batch_size),
                               limit=options.benchmark_limit or None,
                               greedy_steps=options.greedy_steps, data_dir=data_dir)
        for name in options.benchmarks}

  if "genppl" in options.suites:
    results["genppl"] = _generative_perplexity(config, loaded, options, data_options)

  results["wall_seconds"] = time.time() - start
  return results


def _generative_perplexity(config, loaded, options: EvaluationOptions, data_options) -> dict:
  scorers = []
  if options.scorer_workdir:
    scorer_model = loading.load(options.scorer_workdir, loaded.mesh, seq_len=data_options.seq_len)
    scorers.append(genppl.CatflowCausalScorer(scorer_model, max_length=data_options.seq_len))
  if options.hf_scorer_dir:
    scorers.append(genppl.HuggingFaceCausalScorer(options.hf_scorer_dir))
  if not scorers:
    raise ValueError("the genppl suite needs --scorer_workdir (a catflow autoregressive run) or "
                     "--hf_scorer_dir (a local Hugging Face causal LM)")
  steps = options.genppl_steps or (int(config.sample.cfm_steps[-1]) if loaded.is_cfm
                                   else int(config.sample.base_steps))
  tokens, seconds = samples.generate(loaded, num_samples=int(config.sample.num_samples),
                                     num_steps=steps, length=data_options.seq_len,
                                     seed=int(config.sample.seed),
                                     batch_size=int(config.sample.batch_size))
  texts = [loaded.tokenizer.decode(row) for row in tokens]
  entropies = [samples.unigram_entropy(row) for row in tokens]
  result = {"steps": steps, "num_samples": len(texts), "sampling_seconds": seconds,
            "sampler_precision": "float32 logits, argmax decoding",
            "mean_unigram_entropy_nats": float(np.mean(entropies)), "scorers": []}
  for scorer in scorers:
    result["scorers"].append(genppl.generative_perplexity(
        texts, scorer, sample_tokens=[len(row) for row in tokens]))
  return result


def format_results(results: dict) -> str:
  """Renders evaluation results as readable tables."""
  model = results["model"]
  lines = [f"{model['kind']} model, step {model['step']}, {model['workdir']}"]
  if "bound" in results:
    entry = results["bound"]
    lines += ["", "validation bound:",
              f"  {entry['bits_per_character']:.4f} +- {entry['bits_per_character_stderr']:.4f} "
              f"bits/char, {entry['nats_per_token']:.4f} nats/token over {entry['num_tokens']} "
              f"tokens; unigram {entry['unigram']['bits_per_character']:.4f} bits/char"]
  if "perplexity" in results:
    lines += ["", f"{'set':<18} {'tokens':>8} {'bits/token':>16} {'token ppl':>10} "
                  f"{'word ppl':>10} {'bits/char':>10} {'bits/byte':>10}"]
    for name, entry in results["perplexity"].items():
      lines.append(f"{name:<18} {entry['num_scored_tokens']:>8} "
                   f"{entry['bits_per_token']:>8.3f} +- {entry['bits_per_token_stderr']:.3f} "
                   f"{entry['token_perplexity']:>10.1f} {entry['word_perplexity']:>10.1f} "
                   f"{entry['bits_per_character']:>10.3f} {entry['bits_per_byte']:>10.3f}")
  if "benchmarks" in results:
    lines += ["", f"{'benchmark':<16} {'items':>6} {'acc':>14} {'acc_norm_chars':>16} "
                  f"{'acc_norm_bytes':>16}"]
    for name, entry in results["benchmarks"].items():
      cells = []
      for metric in (tasks.ACC, tasks.ACC_NORM_CHARS, tasks.ACC_NORM_BYTES):
        if metric in entry:
          cells.append(f"{entry[metric]:.3f} +- {entry[metric + '_stderr']:.3f}")
        else:
          cells.append("-")
      lines.append(f"{name:<16} {entry.get('num_items', 0):>6} {cells[0]:>14} {cells[1]:>16} "
                   f"{cells[2]:>16}")
  if "genppl" in results:
    entry = results["genppl"]
    lines += ["", f"samples: {entry['num_samples']} at {entry['steps']} steps, mean unigram "
                  f"entropy {entry['mean_unigram_entropy_nats']:.3f} nats"]
    for scorer in entry["scorers"]:
      lines.append(f"  gen PPL {scorer['gen_ppl']:.2f} under {scorer['scorer']} "
                   f"({scorer['scored_tokens']} scored of {scorer['scorer_tokens']} scorer tokens, "
                   f"{scorer['sample_tokens']} sample tokens)")
  return "\n".join(lines)

