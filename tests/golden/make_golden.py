"""Writes the golden files that tests/test_hf_parity.py compares each family against.

Run by hand, never by the tests: the test suite reads only the ``.npz`` files and never
imports torch or transformers. Regenerate after changing a writer, or to check against a newer
transformers.

Set up an environment with torch and transformers once (torch 2.13.0+cpu is available here):

    python -m venv /tmp/golden
    /tmp/golden/bin/pip install "torch==2.13.0+cpu" transformers numpy

then, from the repository root:

    /tmp/golden/bin/python tests/golden/make_golden.py [--only gpt2,llama,bert,t5]

Each writer module beside this script (``hf_gpt2_llama.py``: gpt2 and llama; ``hf_bert.py``:
bert; ``hf_t5.py``: t5) builds tiny random-weight transformers models from configs (nothing is
downloaded) and defines ``write(out_dir) -> list[pathlib.Path]``; a writer not written yet is
skipped with a note. ``--only`` picks writers by the names they serve (gpt2 or llama both run
``hf_gpt2_llama``, which writes both files). Every file, a few hundred KB at most, holds:

- ``hf_module``: the isoflop module with ``config_from_hf`` and ``params_from_hf``;
- ``family``: the name ``models.families.get`` builds the model with;
- ``config_json``: ``config.to_dict()`` as JSON;
- ``weight/<state_dict name>``: float32 parameters (tied duplicates and buffers left out);
- ``call/<name>``: the keyword arguments of the family's module ``__call__``;
- ``logits``: float32, what transformers computed from them.

Writer modules must not import isoflop or jax.
"""

import argparse
import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
# Names on the command line -> the writer module that serves them.
WRITERS = {"gpt2": "hf_gpt2_llama", "llama": "hf_gpt2_llama", "bert": "hf_bert", "t5": "hf_t5"}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default=",".join(WRITERS),
                      help=f"comma-separated subset of {sorted(WRITERS)}")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.only.split(",") if n.strip()]
  unknown = sorted(set(names) - set(WRITERS))
  if unknown:
    parser.error(f"unknown names {unknown}; choose from {sorted(WRITERS)}")
  modules = list(dict.fromkeys(WRITERS[n] for n in names))  # once each, in order

  sys.path.insert(0, str(HERE))
  for module_name in modules:
    try:
      writer = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
      if e.name != module_name:
        raise  # the writer exists but needs something missing from this environment
      print(f"note: {module_name}.py does not exist yet; skipped")
      continue
    for path in writer.write(HERE):
      size_kb = path.stat().st_size / 1024
      print(f"wrote {path.relative_to(HERE.parent.parent)}  {size_kb:.1f} KB")
      if size_kb > 500:
        print(f"warning: {path.name} is over 500 KB; tests/test_hf_parity.py will fail")


if __name__ == "__main__":
  main()
