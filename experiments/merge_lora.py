"""Export a LoRA run as a plain dense run, its adapters merged into the base weights.

  python -m isoflop.experiments.merge_lora --workdir=<LoRA run> --out=<new run> [--step=S]

``--out`` (new, or an empty directory) becomes a run of the LoRA run's config without LoRA
(``train/lora_export.py``): its ``checkpoints/<step>/`` holds W + (alpha / rank) A B for every
adapted kernel and the other parameters as trained, so ``init_from=<out>`` and every tool that
reads a dense run load it; its logits are the LoRA model's (float32 rounding).
Bad input is one line, exit status 2, nothing written.
"""

import argparse
import json
import os
import sys
from typing import Sequence

PROG = "python -m isoflop.experiments.merge_lora"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the LoRA run to export")
  parser.add_argument("--out", required=True, help="directory for the merged dense run")
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint to export (default: the newest)")
  args = parser.parse_args(argv)
  try:
    merged = _export(args.workdir, args.out, args.step)
  except ValueError as e:
    if os.environ.get("ISOFLOP_DEBUG"):
      raise
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  print(f"merged {len(merged['adapters'])} adapted kernels of {merged['workdir']} (step "
        f"{merged['step']}) into {os.path.abspath(args.out)}")
  return 0


def _export(workdir: str, out: str, step: int | None) -> dict:
  from isoflop.experiments import compress
  from isoflop.train import init_from, lora_export
  record_path = os.path.join(workdir, "config.json")
  if not os.path.exists(record_path):
    raise ValueError(f"--workdir={workdir} has no config.json; point it at a LoRA run")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ValueError(f"--out={out} exists and is not an empty directory; pick a new one")
  _, step = init_from.resolve(os.path.abspath(workdir) + ("" if step is None else f":{step}"),
                              flag="--workdir")
  with open(record_path, encoding="utf-8") as f:
    config = compress.run_config(json.load(f)["config"])
  return lora_export.export_merged(config, workdir, step, out)


if __name__ == "__main__":
  sys.exit(main())
