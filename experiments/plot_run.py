r"""Plots the learning curves of one catflow run from its metrics.jsonl.

  python experiments/plot_run.py --workdir=workdirs/long/base --output=curves.png

Draws the training cross-entropy (the loss when the objective logs no
cross-entropy) and, where the objective logs them, the cross-entropy of each tau
quartile (`ce_tau0` is tau in [0, 0.25), ..., `ce_tau3` is
[0.75, 1]) against the step. Needs matplotlib (`pip install -e ".[plots]"`).
"""

from __future__ import annotations

import json
import pathlib

from absl import app
from absl import flags

flags.DEFINE_string("workdir", None, "Workdir of a catflow run (contains metrics.jsonl).",
                    required=True)
flags.DEFINE_string("output", None, "Path of the PNG to write.", required=True)
flags.DEFINE_string("title", "", "Figure title.")


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """Returns the logged entries of a run, in step order."""
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise app.UsageError(f"{path} not found; pass the workdir of a catflow train or distill run")
  entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  if not entries:
    raise app.UsageError(f"{path} contains no logged steps; plot a run that has logged at least "
                         "one step")
  return sorted(entries, key=lambda entry: entry["step"])


def main(argv):
  del argv
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  entries = read_metrics(pathlib.Path(flags.FLAGS.workdir))
  steps = [entry["step"] for entry in entries]
  figure, axis = plt.subplots(figsize=(7, 4))
  # Under a weighted objective the loss is not a cross-entropy, so prefer the latter.
  main_key = "cross_entropy" if "cross_entropy" in entries[0] else "loss"
  axis.plot(steps, [entry[main_key] for entry in entries], label=main_key.replace("_", "-"),
            color="black")
  for quartile in range(4):
    key = f"ce_tau{quartile}"
    if key in entries[0]:
      closing = "]" if quartile == 3 else ")"
      axis.plot(steps, [entry[key] for entry in entries], linewidth=0.8,
                label=f"cross-entropy, tau in [{quartile / 4:.2f}, {(quartile + 1) / 4:.2f}{closing}")
  axis.set_xlabel("step")
  axis.set_ylabel("nats/token")
  axis.set_title(flags.FLAGS.title)
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(flags.FLAGS.output, dpi=120)
  print(f"wrote {flags.FLAGS.output} ({len(entries)} logged steps)")


if __name__ == "__main__":
  app.run(main)
