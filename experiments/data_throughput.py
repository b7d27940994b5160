"""How fast the data pipeline produces training batches on the host, from a cached stream.

    taskset -c 0 python -m isoflop.experiments.data_throughput \\
        --config=experiments/configs/tiny.py --config.data.source=shakespeare --batches=500

Builds the source (tokenizing once into the cache if needed, not timed), then times
``source.batch`` for consecutive steps exactly as the training loop calls it, and prints the
batches/s and tokens/s, or examples/s for images (a JSON line with --json).
"""

import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
  from absl import flags

  from isoflop.experiments import cli
  from isoflop.train import data as data_lib

  def define(flag_values):
    flags.DEFINE_integer("batches", 500, "batches to time", flag_values=flag_values)
    flags.DEFINE_bool("json", False, "print one JSON line", flag_values=flag_values)

  try:
    flag_values = cli.parse_config(list(argv or sys.argv), define)
    config = flag_values.config
    source = data_lib.make_source(config)
  except (cli.UsageError, ValueError) as e:
    print(f"data_throughput: error: {e}", file=sys.stderr)
    return cli.EXIT_BAD_INPUT
  batch_size = config.batch_size
  # warm up: first touch of the memory-mapped cache
  images = "image" in source.batch(np.arange(batch_size))
  start = time.perf_counter()
  for step in range(1, flag_values.batches + 1):
    source.batch(step * batch_size + np.arange(batch_size))
  elapsed = time.perf_counter() - start
  result = {"source": config.data.source, "batch_size": batch_size,
            "batches": flag_values.batches, "seconds": elapsed,
            "batches_per_s": flag_values.batches / elapsed}
  if images:  # images: examples per second, with the run's augmentations
    result["examples_per_s"] = flag_values.batches * batch_size / elapsed
    result["augment"] = config.data.augment.to_dict()
    line = (f"{config.data.source}, batch {batch_size}, augment {result['augment']}: "
            f"{result['batches_per_s']:.0f} batches/s, {result['examples_per_s']:,.0f} "
            "examples/s")
  else:
    result.update(tokenizer=config.data.tokenizer, seq_len=config.seq_len,
                  tokens_per_s=flag_values.batches * batch_size * config.seq_len / elapsed)
    line = (f"{config.data.source} ({config.data.tokenizer}), batch {batch_size} x "
            f"{config.seq_len}: {result['batches_per_s']:.0f} batches/s, "
            f"{result['tokens_per_s']:,.0f} tokens/s")
  print(json.dumps(result) if flag_values.json else line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
