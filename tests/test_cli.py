"""Tests for the command line: `python -m catflow`, its usage errors and the quickstart.

Every command runs as a subprocess with the test environment (eight fake CPU
devices), in the repository root, on a synthetic corpus and a cache inside a
temporary directory. The end-to-end test runs the quickstart with the "local"
variant of experiments/configs/shakespeare_char.py, then `catflow evaluate`
and `catflow sample` on the CFM it wrote.
"""

import json
import math
import os
import pathlib
import random
import subprocess
import sys

import pytest

from catflow import cli
from catflow import quickstart

_REPO = pathlib.Path(__file__).resolve().parents[1]
_LOCAL_CONFIG = "experiments/configs/shakespeare_char.py:local"
_WORDS = ("shall i compare thee to a summers day thou art more lovely and temperate rough winds "
          "do shake the darling buds of may").split()
_TIMEOUT_S = 900


def run_catflow(*args: str, cache_dir: pathlib.Path | None = None) -> subprocess.CompletedProcess:
  """Runs `python -m catflow ARGS` in the repository root and returns the finished process."""
  environment = dict(os.environ)
  if cache_dir is not None:
    environment["CATFLOW_CACHE_DIR"] = str(cache_dir)
  return subprocess.run([sys.executable, "-m", "catflow", *args], cwd=_REPO, env=environment,
                        capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)


def describe(process: subprocess.CompletedProcess) -> str:
  return (f"exit status {process.returncode}\nstdout:\n{process.stdout[-3000:]}\n"
          f"stderr:\n{process.stderr[-3000:]}")


def write_corpus(path: pathlib.Path) -> pathlib.Path:
  """Writes about 49,000 characters, so the 5% validation tail fills more than 16 windows."""
  rng = random.Random(2)
  lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9))) for _ in range(1600)]
  path.write_text("\n".join(lines) + "\n")
  return path


# -----------------------------------------------------------------------------
# Dispatch and usage errors.
# -----------------------------------------------------------------------------


def test_help_exits_zero():
  process = run_catflow("--help")
  assert process.returncode == 0, describe(process)
  assert "catflow quickstart" in process.stdout
  assert "commands: train, distill, evaluate, sample, quickstart" in process.stdout


def test_no_command_exits_two():
  process = run_catflow()
  assert process.returncode == 2, describe(process)
  assert "commands: train, distill, evaluate, sample, quickstart" in process.stdout


def test_unknown_command_exits_two():
  process = run_catflow("fly", "--workdir=/nonexistent")
  assert process.returncode == 2, describe(process)
  assert "catflow: unknown command 'fly'" in process.stderr


def test_command_help_lists_flags():
  process = run_catflow("sample", "--help")
  assert process.returncode == 0, describe(process)
  assert "--steps" in process.stdout, describe(process)


def test_main_help_in_process(capsys):
  assert cli.main(["catflow", "help"]) == 0
  assert "commands: train, distill, evaluate, sample, quickstart" in capsys.readouterr().out


def test_main_unknown_command_in_process(capsys):
  assert cli.main(["catflow", "fly"]) == 2
  assert "unknown command 'fly'" in capsys.readouterr().err


def test_train_without_config(tmp_path):
  process = run_catflow("train", f"--workdir={tmp_path / 'run'}")
  assert process.returncode == 1, describe(process)
  assert "catflow train needs --config=FILE" in process.stderr
  assert not (tmp_path / "run").exists()


def test_train_without_workdir():
  process = run_catflow("train", f"--config={_LOCAL_CONFIG}")
  assert process.returncode == 1, describe(process)
  assert "catflow train needs --workdir=DIR" in process.stderr


def test_train_unexpected_argument(tmp_path):
  process = run_catflow("train", "extra", f"--config={_LOCAL_CONFIG}",
                        f"--workdir={tmp_path / 'run'}")
  assert process.returncode == 1, describe(process)
  assert "unexpected arguments ['extra']" in process.stderr
  assert not (tmp_path / "run").exists()


def test_train_unknown_config_field(tmp_path):
  process = run_catflow("train", f"--config={_LOCAL_CONFIG}", "--config.data.shuffle=1",
                        f"--workdir={tmp_path / 'run'}")
  assert process.returncode == 2, describe(process)
  assert "shuffle" in process.stderr
  assert not (tmp_path / "run").exists()


def test_unknown_config_variant(tmp_path):
  process = run_catflow("train", "--config=experiments/configs/shakespeare_char.py:huge",
                        f"--workdir={tmp_path / 'run'}")
  assert process.returncode == 2, describe(process)
  assert "unknown variant 'huge' of shakespeare_char.py" in process.stderr


# -----------------------------------------------------------------------------
# The quickstart end to end, then evaluate and sample on its CFM.
# -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
  """Runs the quickstart once and returns (process, workdir, report, corpus, cache dir)."""
  directory = tmp_path_factory.mktemp("cli")
  corpus = write_corpus(directory / "sonnet.txt")
  cache_dir = directory / "cache"
  workdir = directory / "quickstart"
  process = run_catflow("quickstart", f"--config={_LOCAL_CONFIG}",
                        f"--config.data.corpus={corpus}", f"--config.data.cache_dir={cache_dir}",
                        f"--workdir={workdir}", cache_dir=cache_dir)
  assert process.returncode == 0, describe(process)
  report = json.loads((workdir / "report.json").read_text())
  return process, workdir, report, corpus, cache_dir


def _config_flags(corpus: pathlib.Path, cache_dir: pathlib.Path) -> list[str]:
  return [f"--config={_LOCAL_CONFIG}", f"--config.data.corpus={corpus}",
          f"--config.data.cache_dir={cache_dir}"]


@pytest.mark.slow
def test_quickstart_writes_runs(quickstart_run):
  _, workdir, _, _, _ = quickstart_run
  assert (workdir / "base" / "checkpoints").is_dir()
  assert (workdir / "cfm" / "checkpoints").is_dir()
  assert (workdir / "base" / "metrics.jsonl").is_file()
  assert (workdir / "cfm" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_quickstart_report_steps(quickstart_run):
  report = quickstart_run[2]
  assert report["base"]["steps"] == 20
  assert report["cfm"]["steps"] == 10
  assert report["cfm"]["base_steps"] == 20


@pytest.mark.slow
def test_quickstart_report_corpus(quickstart_run):
  report, corpus = quickstart_run[2], quickstart_run[3]
  text = corpus.read_text()
  assert report["corpus"]["name"] == str(corpus)
  assert report["corpus"]["tokenizer"]["name"] == "char"
  assert report["corpus"]["tokenizer"]["vocab_size"] == len(set(text)) + 1
  assert report["corpus"]["train_tokens"] + report["corpus"]["validation_tokens"] == len(text)
  assert report["corpus"]["unigram_entropy_bits_per_token"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["base", "cfm"])
def test_quickstart_report_bound(quickstart_run, model):
  entry = quickstart_run[2][model]["bound"]
  assert entry["kind"] == model
  assert entry["num_windows"] == 16
  for name in ("bits_per_character", "bits_per_character_stderr", "nats_per_token",
               "nats_per_token_stderr"):
    assert math.isfinite(entry[name]), name
  assert entry["bits_per_character"] > 0
  assert entry["bits_per_character_stderr"] > 0
  unigram = entry["unigram"]
  for name in ("bits_per_character", "difference_bits_per_character", "difference_stderr"):
    assert math.isfinite(unigram[name]), name
  assert unigram["difference_stderr"] > 0


@pytest.mark.slow
def test_quickstart_report_sample_sources(quickstart_run):
  samples = quickstart_run[2]["samples"]
  assert [(entry["source"], entry["steps"]) for entry in samples] == [
      ("validation windows", None), ("base model (Euler)", 8), ("CFM", 1), ("CFM", 2),
      ("CFM", 4)]


@pytest.mark.slow
def test_quickstart_report_sample_metrics(quickstart_run):
  for entry in quickstart_run[2]["samples"]:
    label = f"{entry['source']} {entry['steps']}"
    assert entry["num_samples"] == 4, label
    assert math.isfinite(entry["mean_unigram_entropy_nats"]), label
    assert entry["mean_unigram_entropy_nats"] >= 0, label
    assert 0.0 <= entry["word_fraction"] <= 1.0, label
    assert entry["num_words"] >= 0, label
    assert entry["wall_seconds"] >= 0, label
    assert len(entry["examples"]) == 3, label


@pytest.mark.slow
def test_quickstart_validation_windows_are_words(quickstart_run):
  reference = quickstart_run[2]["samples"][0]
  # The held-out text uses the same words, so only the words cut at a window's
  # edges can be missing from the training vocabulary. Four windows of 128
  # characters contain about 80 words.
  assert reference["word_fraction"] > 0.8
  assert reference["num_words"] > 40
  assert reference["mean_unigram_entropy_nats"] > 1.0


@pytest.mark.slow
def test_quickstart_prints_table(quickstart_run):
  process, workdir, report, _, _ = quickstart_run
  assert quickstart.format_report(report) in process.stdout
  assert f"report: {workdir / 'report.json'}" in process.stdout
  assert "bound - unigram" in process.stdout


@pytest.mark.slow
def test_evaluate_command(quickstart_run):
  _, workdir, report, corpus, cache_dir = quickstart_run
  process = run_catflow("evaluate", *_config_flags(corpus, cache_dir),
                        f"--workdir={workdir / 'cfm'}", cache_dir=cache_dir)
  assert process.returncode == 0, describe(process)
  output = workdir / "cfm" / "evaluate_10.json"
  assert f"results: {output}" in process.stdout
  results = json.loads(output.read_text())
  assert results["model"]["kind"] == "cfm"
  assert results["model"]["step"] == 10
  summary = results["bound"]
  # Same windows, seeds and params as the quickstart's evaluation of the CFM.
  expected = report["cfm"]["bound"]
  for name in ("nats_per_token", "nats_per_token_stderr", "bits_per_character"):
    assert summary[name] == pytest.approx(expected[name], rel=1e-6), name
  assert (summary["unigram"]["difference_bits_per_character"]
          == pytest.approx(expected["unigram"]["difference_bits_per_character"], rel=1e-6))


@pytest.mark.slow
def test_sample_command(quickstart_run, tmp_path):
  _, workdir, report, corpus, cache_dir = quickstart_run
  output = tmp_path / "samples.json"
  process = run_catflow("sample", *_config_flags(corpus, cache_dir), f"--workdir={workdir / 'cfm'}",
                        "--steps=2", "--num_samples=3", f"--output={output}", cache_dir=cache_dir)
  assert process.returncode == 0, describe(process)
  written = json.loads(output.read_text())
  assert written["kind"] == "cfm"
  assert written["step"] == 10
  assert written["steps"] == 2
  assert len(written["texts"]) == 3
  assert [len(text) for text in written["texts"]] == [128] * 3
  assert len(written["unigram_entropy_nats"]) == 3
  assert "3 samples, 2 steps" in process.stdout
  # The quickstart drew the same seed in one batch of 8 rows, so the first
  # three samples repeat its 2-jump CFM examples.
  (cfm_two_steps,) = [entry for entry in report["samples"]
                      if entry["source"] == "CFM" and entry["steps"] == 2]
  assert written["texts"] == cfm_two_steps["examples"]


@pytest.mark.slow
def test_evaluate_every_suite_in_one_command(quickstart_run, tmp_path, shared_data):
  # An autoregressive scorer on the same corpus, then one evaluate command with
  # the perplexity sets, all ten benchmarks (a few items each) and gen PPL.
  _, workdir, _, corpus, cache_dir = quickstart_run
  scorer = tmp_path / "scorer"
  process = run_catflow("train", *_config_flags(corpus, cache_dir), f"--workdir={scorer}",
                        "--config.model.causal=True", "--config.objective.name=autoregressive",
                        cache_dir=cache_dir)
  assert process.returncode == 0, describe(process)
  output = tmp_path / "all.json"
  process = run_catflow(
      "evaluate", *_config_flags(corpus, cache_dir), f"--workdir={workdir / 'base'}",
      "--suites=bound,perplexity,benchmarks,genppl", "--perplexity_sets=ptb_test",
      "--benchmark_limit=2", f"--scorer_workdir={scorer}", f"--output={output}",
      "--config.eval.num_time_samples=2", "--config.sample.num_samples=4", cache_dir=cache_dir)
  assert process.returncode == 0, describe(process)
  results = json.loads(output.read_text())
  assert set(results) >= {"model", "bound", "perplexity", "benchmarks", "genppl", "seeds"}
  ptb = results["perplexity"]["ptb_test"]
  assert ptb["set"]["num_words_for_perplexity"] == 82430
  assert ptb["num_scored_tokens"] > 0
  assert len(results["benchmarks"]) == 10
  for name, entry in results["benchmarks"].items():
    assert entry["num_items"] == 2, name
  genppl = results["genppl"]
  assert genppl["num_samples"] == 4
  assert genppl["scorers"][0]["gen_ppl"] > 1.0
  assert "gen PPL" in process.stdout
