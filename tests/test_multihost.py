"""Multi-process training and checkpoints restored on other device meshes.

These tests start real JAX processes (2 processes x 4 CPU devices on localhost,
coordinated by jax.distributed with Gloo collectives) and compare them with one
process x 8 devices.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f"{REPO}/experiments/configs/shakespeare_char.py:local"


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:200_000])
  return path


def _flags(corpus, cache, workdir, steps, mesh):
  data, fsdp, tensor = mesh
  return [f"--config={CONFIG}", f"--config.data.corpus={corpus}", f"--config.data.cache_dir={cache}",
          f"--workdir={workdir}", f"--config.num_steps={steps}", "--config.log_every=1",
          "--config.checkpoint_every=4", "--config.optimizer.decay=constant",
          "--config.optimizer.warmup_steps=2", f"--config.mesh.data={data}",
          f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}"]


def _start(flags, devices, extra_env=None):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", **(extra_env or {}))
  return subprocess.Popen([sys.executable, "-m", "catflow", "train", *flags], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _finish(process, timeout=600):
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-4000:]
  return output


def _losses(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {entry["step"]: entry["loss"] for entry in map(json.loads, lines)}


@pytest.mark.slow
def test_two_processes_match_one_process(corpus, tmp_path):
  cache = tmp_path / "cache"
  _finish(_start(_flags(corpus, cache, tmp_path / "single", 6, (8, 1, 1)), devices=8))
  port = _free_port()
  processes = [
      _start(_flags(corpus, cache, tmp_path / "multi", 6, (8, 1, 1)), devices=4,
             extra_env={"CATFLOW_COORDINATOR_ADDRESS": f"localhost:{port}",
                        "CATFLOW_NUM_PROCESSES": "2", "CATFLOW_PROCESS_ID": str(index)})
      for index in range(2)]
  outputs = [_finish(process) for process in processes]
  assert "Process 1 of 2 started" in outputs[1]
  single, multi = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
  assert sorted(multi) == list(range(1, 7))
  np.testing.assert_allclose([multi[step] for step in range(1, 7)],
                             [single[step] for step in range(1, 7)], rtol=1e-5)
  # One data-position file per process in every checkpoint.
  data_files = sorted(path.name for path in (tmp_path / "multi" / "checkpoints" / "6" / "data").iterdir())
  assert "process_0-of-2.json" in data_files
  assert "process_1-of-2.json" in data_files


@pytest.mark.slow
@pytest.mark.parametrize("mesh,devices", [((8, 1, 1), 8), ((1, 1, 1), 1), ((2, 2, 2), 8)])
def test_checkpoint_restores_on_other_mesh(corpus, tmp_path_factory, mesh, devices):
  root = tmp_path_factory.getbasetemp() / "topology"
  cache = root / "cache"
  reference, saved = root / "reference", root / "saved"
  if not reference.exists():
    # Uninterrupted 8 steps on (data=4, tensor=2), and a run of 4 steps on the same mesh.
    _finish(_start(_flags(corpus, cache, reference, 8, (4, 1, 2)), devices=8))
    _finish(_start(_flags(corpus, cache, saved, 4, (4, 1, 2)), devices=8))
  resumed = tmp_path_factory.mktemp("resumed") / "run"
  shutil.copytree(saved, resumed)
  output = _finish(_start(_flags(corpus, cache, resumed, 8, mesh), devices=devices))
  assert "Resuming base run at step 4 of 8" in output
  expected, got = _losses(reference), _losses(resumed)
  np.testing.assert_allclose([got[step] for step in range(5, 9)],
                             [expected[step] for step in range(5, 9)], rtol=2e-5)


@pytest.mark.slow
def test_prepared_data_resumes_with_another_process_count(corpus, tmp_path):
  # Prepare the corpus, train 8 steps in one process, and 4 steps in one
  # process resumed to 8 in two processes: the step-indexed stream keeps the
  # same global batches, so the losses agree.
  cache, prepared = tmp_path / "cache", tmp_path / "prepared"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-m", "catflow", "prepare", f"--config={CONFIG}",
                  f"--config.data.corpus={corpus}", f"--config.data.cache_dir={cache}",
                  f"--output={prepared}", "--noprogress"], check=True, env=env, cwd=REPO,
                 capture_output=True)
  extra = [f"--config.data.prepared_dir={prepared}"]
  _finish(_start(_flags(corpus, cache, tmp_path / "reference", 8, (8, 1, 1)) + extra, devices=8))
  _finish(_start(_flags(corpus, cache, tmp_path / "resumed", 4, (8, 1, 1)) + extra, devices=8))
  port = _free_port()
  processes = [
      _start(_flags(corpus, cache, tmp_path / "resumed", 8, (8, 1, 1)) + extra, devices=4,
             extra_env={"CATFLOW_COORDINATOR_ADDRESS": f"localhost:{port}",
                        "CATFLOW_NUM_PROCESSES": "2", "CATFLOW_PROCESS_ID": str(index)})
      for index in range(2)]
  for process in processes:
    _finish(process)
  expected, got = _losses(tmp_path / "reference"), _losses(tmp_path / "resumed")
  np.testing.assert_allclose([got[step] for step in range(1, 9)],
                             [expected[step] for step in range(1, 9)], rtol=1e-5)
