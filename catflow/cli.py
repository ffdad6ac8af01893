"""`catflow <command>`: the command-line entry points.

  catflow train      --config=FILE[:VARIANT] --workdir=DIR [--config.key=value ...]
  catflow distill    --config=FILE --workdir=DIR --config.distill.base_workdir=BASE_DIR
  catflow evaluate   --config=FILE --workdir=DIR [--step=N]
  catflow sample     --config=FILE --workdir=DIR [--steps=K] [--num_samples=N]
  catflow quickstart [--workdir=DIR] [--config=FILE]
  catflow plan       --config=FILE [--kind=base|cfm] [--real_devices]
  catflow prepare    --config=FILE --output=DIR [--rows_per_shard=N]

Configs are ml_collections files; every field can be overridden with
--config.key=value. `python -m catflow` works the same way.
"""

from __future__ import annotations

import functools
import json
import math
import logging as std_logging
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

COMMANDS = ("train", "distill", "evaluate", "sample", "quickstart", "plan", "prepare")
_QUIET_LIBRARIES = ("/orbax/", "/grain/", "/absl/")


def _default_config_path() -> str:
  """Finds the quickstart config relative to the working directory or the repository."""
  from catflow import quickstart  # pylint: disable=import-outside-toplevel
  candidates = [pathlib.Path.cwd() / quickstart.DEFAULT_CONFIG,
                pathlib.Path(__file__).resolve().parents[1] / quickstart.DEFAULT_CONFIG]
  for candidate in candidates:
    if candidate.exists():
      return str(candidate)
  return quickstart.DEFAULT_CONFIG


class _LibraryLogFilter(std_logging.Filter):
  """Hides INFO records from Orbax and Grain, whose per-file logs drown the run's own."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _QUIET_LIBRARIES[:2])


def _define_flags(command: str):
  default_config = _default_config_path() if command == "quickstart" else None
  config_flags.DEFINE_config_file(
      "config", default_config, "Experiment config file (ml_collections), optionally FILE:VARIANT.",
      lock_config=True)
  default_workdir = "workdirs/quickstart" if command == "quickstart" else None
  if command not in ("plan", "prepare"):
    flags.DEFINE_string("workdir", default_workdir, "Directory of the run: checkpoints, metrics, "
                        "reports. Re-running with the same directory resumes.")
  if command == "prepare":
    flags.DEFINE_string("output", None, "Directory for the shards and manifest.json.")
    flags.DEFINE_integer("rows_per_shard", 65536, "Packed rows per ArrayRecord shard.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
  if command == "plan":
    flags.DEFINE_enum("kind", "base", ["base", "cfm"], "Plan the base training step or the "
                      "distillation step.")
    flags.DEFINE_bool("real_devices", False, "Compile for the devices present instead of "
                      "faking one CPU device per mesh position.")
    flags.DEFINE_string("output", None, "JSON file for the plan.")
  if command in ("evaluate", "sample"):
    flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the latest.")
    flags.DEFINE_string("output", None, "JSON file for the results; default: "
                        f"WORKDIR/{command}_STEP.json.")
  if command == "sample":
    flags.DEFINE_integer("steps", None, "Sampling steps: Euler steps of a base model or jumps of a "
                         "CFM; default: config.sample.base_steps or the first cfm_steps.")
    flags.DEFINE_integer("num_samples", None, "Number of samples; default: config.sample.num_samples.")
    flags.DEFINE_float("temperature", 0.0, "0 takes the argmax of the final endpoint; > 0 draws "
                       "from softmax(logits / temperature).")
    flags.DEFINE_bool("word_fraction", True, "Also report the fraction of generated words that "
                      "occur in the training text of config.data.")
  if command in ("train", "distill", "evaluate", "sample"):
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a multi-process "
                        "run; default: $CATFLOW_COORDINATOR_ADDRESS.")
    flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run; default: "
                         "$CATFLOW_NUM_PROCESSES.")
    flags.DEFINE_integer("process_id", None, "This process's index; default: $CATFLOW_PROCESS_ID.")
    flags.DEFINE_bool("distributed_auto", False, "Call jax.distributed.initialize() with no "
                      "arguments (TPU pods).")
  if command == "evaluate":
    flags.DEFINE_list("suites", ["bound"], "Suites to run: bound, perplexity, benchmarks, genppl.")
    flags.DEFINE_list("perplexity_sets", ["ptb_test", "ptb_valid", "wikitext2_test",
                                          "wikitext2_valid"],
                      "Perplexity sets: registered names or paths to .txt files.")
    flags.DEFINE_integer("block_size", 0, "Perplexity window length in tokens; 0 means "
                         "data.seq_len.")
    flags.DEFINE_integer("benchmark_max_length", 0, "Tokens per benchmark request, the context "
                         "truncated from the left; 0 means max(data.seq_len, 512).")
    flags.DEFINE_integer("stride", 0, "Perplexity window step; 0 means block_size (disjoint "
                         "windows, whose total is a bound).")
    flags.DEFINE_list("benchmarks", ["lambada_openai", "piqa", "hellaswag", "arc_easy",
                                     "arc_challenge", "winogrande", "openbookqa", "siqa", "boolq",
                                     "copa"], "Zero-shot benchmarks to run.")
    flags.DEFINE_integer("benchmark_limit", 0, "Items per benchmark; 0 means all.")
    flags.DEFINE_string("scorer_workdir", None, "genppl: workdir of a catflow autoregressive run.")
    flags.DEFINE_string("hf_scorer_dir", None, "genppl: local directory of a Hugging Face causal "
                        "LM.")
    flags.DEFINE_integer("genppl_steps", 0, "genppl: sampling steps; 0 means the config's.")
  if command in ("distill", "evaluate"):
    flags.DEFINE_bool("allow_tokenizer_mismatch", False, "Use a checkpoint whose tokenizer differs "
                      "from the data's.")


def _require_config_and_workdir(command: str):
  if flags.FLAGS.config is None:
    raise app.UsageError(f"catflow {command} needs --config=FILE, e.g. "
                         "--config=experiments/configs/shakespeare_char.py")
  if command not in ("plan", "prepare") and not flags.FLAGS.workdir:
    raise app.UsageError(f"catflow {command} needs --workdir=DIR")


def _main_for(command: str):
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.get_absl_handler().addFilter(_LibraryLogFilter())
    _require_config_and_workdir(command)
    config = flags.FLAGS.config
    if command == "plan":
      _plan(config)
      return
    if command == "prepare":
      _prepare(config)
      return
    workdir = pathlib.Path(flags.FLAGS.workdir)
    if command in ("train", "distill", "evaluate", "sample"):
      from catflow.parallel import distributed  # pylint: disable=import-outside-toplevel
      distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                             flags.FLAGS.process_id, auto=flags.FLAGS.distributed_auto)
    if command == "train":
      from catflow.train import trainer  # pylint: disable=import-outside-toplevel
      trainer.run(config, workdir, kind="base")
    elif command == "distill":
      from catflow.train import distill  # pylint: disable=import-outside-toplevel
      distill.run(config, workdir, allow_tokenizer_mismatch=flags.FLAGS.allow_tokenizer_mismatch)
    elif command == "evaluate":
      _evaluate(config, workdir)
    elif command == "sample":
      _sample(config, workdir)
    else:
      from catflow import quickstart  # pylint: disable=import-outside-toplevel
      report = quickstart.run(config, workdir)
      print(quickstart.format_report(report))
      print(f"\nreport: {workdir / 'report.json'}")
  return main


def _prepare(config):
  from catflow.data import pipeline  # pylint: disable=import-outside-toplevel
  from catflow.data import prepare  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.output:
    raise app.UsageError("catflow prepare needs --output=DIR")
  options = pipeline.DataOptions.from_mapping(config.data.to_dict())
  documents = options.load_documents()
  tokenizer = pipeline.build_tokenizer(options, documents)
  manifest = prepare.prepare(documents, tokenizer, flags.FLAGS.output, options=options,
                             corpus_name=options.corpus, rows_per_shard=flags.FLAGS.rows_per_shard,
                             progress=flags.FLAGS.progress)
  for split, entry in manifest["splits"].items():
    print(f"{split}: {entry['rows']:,} rows of {manifest['seq_len']} tokens, {entry['tokens']:,} "
          f"tokens, {len(entry['shards'])} shard(s)")
  print(f"manifest: {pathlib.Path(flags.FLAGS.output) / prepare.MANIFEST}")


def _plan(config):
  if not flags.FLAGS.real_devices:
    sizes = [int(size) for size in config.mesh.to_dict().values()]
    if any(size < 1 for size in sizes):
      raise app.UsageError(f"catflow plan needs explicit mesh sizes, got {config.mesh.to_dict()}; "
                           "replace -1 with a size or pass --real_devices")
    if "jax" in sys.modules:
      logging.warning("JAX was imported before catflow plan could fake %d devices",
                      math.prod(sizes))
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={math.prod(sizes)}")
    os.environ["JAX_PLATFORMS"] = "cpu"
  from catflow.train import plan  # pylint: disable=import-outside-toplevel
  result = plan.plan(config, kind=flags.FLAGS.kind)
  print(plan.format_plan(result))
  if flags.FLAGS.output:
    pathlib.Path(flags.FLAGS.output).write_text(json.dumps(result, indent=2))


def _evaluate(config, workdir: pathlib.Path):
  from catflow.data import pipeline  # pylint: disable=import-outside-toplevel
  from catflow.data import tokenizers  # pylint: disable=import-outside-toplevel
  from catflow.evaluate import loading  # pylint: disable=import-outside-toplevel
  from catflow.evaluate import run  # pylint: disable=import-outside-toplevel
  from catflow.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  options = run.EvaluationOptions(
      suites=flags.FLAGS.suites, perplexity_sets=flags.FLAGS.perplexity_sets,
      block_size=flags.FLAGS.block_size, stride=flags.FLAGS.stride,
      benchmarks=flags.FLAGS.benchmarks, benchmark_limit=flags.FLAGS.benchmark_limit,
      benchmark_max_length=flags.FLAGS.benchmark_max_length,
      scorer_workdir=flags.FLAGS.scorer_workdir or "", hf_scorer_dir=flags.FLAGS.hf_scorer_dir or "",
      genppl_steps=flags.FLAGS.genppl_steps)
  data_options = pipeline.DataOptions.from_mapping(config.data.to_dict())
  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  loaded = loading.load(workdir, mesh, flags.FLAGS.step, seq_len=data_options.seq_len)
  if "bound" in options.suites and not flags.FLAGS.allow_tokenizer_mismatch:
    # The validation windows must be tokenised the way the model was trained.
    corpus = pipeline.load_tokenized(data_options)
    tokenizers.check_same_tokenizer(loaded.meta["tokenizer"]["identity"],
                                    corpus.tokenizer.identity(),
                                    what=f"checkpoint in {workdir} vs config.data")
  results = run.run(config, loaded, options)
  from catflow.parallel import distributed  # pylint: disable=import-outside-toplevel
  if not distributed.is_primary():
    return
  output = pathlib.Path(flags.FLAGS.output or workdir / f"evaluate_{loaded.step}.json")
  output.write_text(json.dumps(results, indent=2))
  print(run.format_results(results))
  print(f"results: {output}")


def _sample(config, workdir: pathlib.Path):
  from catflow.evaluate import loading  # pylint: disable=import-outside-toplevel
  from catflow.evaluate import samples  # pylint: disable=import-outside-toplevel
  from catflow.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  mesh = mesh_lib.build_mesh(config.mesh.to_dict())
  loaded = loading.load(workdir, mesh, flags.FLAGS.step, seq_len=config.data.seq_len)
  steps = flags.FLAGS.steps
  if steps is None:
    steps = int(config.sample.cfm_steps[0]) if loaded.is_cfm else int(config.sample.base_steps)
  num_samples = flags.FLAGS.num_samples
  if num_samples is None:
    num_samples = int(config.sample.num_samples)
  if num_samples < 1:
    raise app.UsageError(f"--num_samples={num_samples} must be positive")
  tokens, seconds = samples.generate(loaded, num_samples=num_samples, num_steps=steps,
                                     length=int(config.data.seq_len), seed=int(config.sample.seed),
                                     batch_size=int(config.sample.batch_size),
                                     temperature=flags.FLAGS.temperature)
  texts = [loaded.tokenizer.decode(row) for row in tokens]
  entropies = [samples.unigram_entropy(row) for row in tokens]
  for index, (text, entropy) in enumerate(zip(texts, entropies)):
    print(f"--- sample {index} (unigram entropy {entropy:.3f} nats)\n{text}")
  summary = {"kind": loaded.kind, "step": loaded.step, "steps": steps,
             "seed": int(config.sample.seed), "num_samples": num_samples, "wall_seconds": seconds,
             "mean_unigram_entropy_nats": sum(entropies) / len(entropies)}
  print(f"\n{num_samples} samples, {steps} steps, {seconds:.1f} s; mean unigram entropy "
        f"{summary['mean_unigram_entropy_nats']:.3f} nats")
  from catflow.parallel import distributed  # pylint: disable=import-outside-toplevel
  if not distributed.is_primary():
    return
  output = pathlib.Path(flags.FLAGS.output or workdir / f"sample_{loaded.step}.json")
  output.write_text(json.dumps(dict(summary, texts=texts, unigram_entropy_nats=entropies),
                               indent=2))
  if flags.FLAGS.word_fraction and config.data.corpus:
    from catflow.data import pipeline  # pylint: disable=import-outside-toplevel
    data_options = pipeline.DataOptions.from_mapping(config.data.to_dict())
    corpus = pipeline.load_tokenized(data_options, tokenizer=loaded.tokenizer)
    fraction, count = samples.word_fraction(texts, samples.word_vocabulary(corpus.train_text))
    summary.update(word_fraction=fraction, num_words=count)
    print(f"word fraction (generated words found in the training text): {fraction:.3f} of {count}")
    output.write_text(json.dumps(dict(summary, texts=texts, unigram_entropy_nats=entropies),
                                 indent=2))
  elif flags.FLAGS.word_fraction:
    logging.warning("No word fraction: config.data.corpus is empty, so there is no training text")
  print(f"samples: {output}")


def _parse_flags(command: str, argv: list[str]) -> list[str]:
  """Parses flags; a bad flag or config override exits with status 2 and a one-line message."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    print(f"catflow {command}: invalid flags ({type(error).__name__}: {error}). Overrides must "
          "name existing config fields, e.g. --config.num_steps=100; run "
          f"`catflow {command} --help` for the flags.", file=sys.stderr)
    sys.exit(2)


def _usage() -> str:
  return __doc__ + f"\ncommands: {', '.join(COMMANDS)}\n"


def main(argv: list[str] | None = None):
  """Dispatches `catflow <command> [flags]`."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    return 0 if len(argv) >= 2 else 2
  command = argv[1]
  if command not in COMMANDS:
    print(f"catflow: unknown command {command!r}\n{_usage()}", file=sys.stderr)
    return 2
  _define_flags(command)
  program = f"{os.path.basename(argv[0])} {command}"
  if any(arg in ("-h", "--help", "--helpshort") for arg in argv[2:]):
    print(f"catflow {command} flags:\n{flags.FLAGS.module_help(sys.modules[__name__])}")
    return 0
  app.run(_main_for(command), argv=[program] + argv[2:],
          flags_parser=functools.partial(_parse_flags, command))
  return 0


if __name__ == "__main__":
  sys.exit(main())
