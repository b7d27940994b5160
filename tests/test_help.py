"""``isoflop --help`` and ``isoflop <subcommand> --help``/``-h`` (in-process, no config needed)."""

import pytest

from isoflop.experiments import cli

SUBCOMMANDS = ["train", "sweep", "analyze", "bench", "coordcheck", "transfer", "compress",
               "compare", "sample", "convert"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_prints_usage_flags_and_example(name, flag, capsys, tmp_path,
                                                        monkeypatch):
  monkeypatch.chdir(tmp_path)  # --help must read no config and write nothing
  assert cli.main(["isoflop", name, flag]) == 0
  out, err = capsys.readouterr()
  assert err == ""
  assert out.startswith(f"usage: isoflop {name} ")
  assert "flags:\n  --" in out
  assert "example" in out and f"\n  isoflop {name} --" in out  # an example command line
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_wins_over_other_flags(name, capsys, tmp_path, monkeypatch):
  """``--help`` among other (even bad) arguments still only prints the help."""
  monkeypatch.chdir(tmp_path)
  argv = ["isoflop", name, "--config=no_such_file.py", "--workdir=w", "--out=o", "--help"]
  assert cli.main(argv) == 0
  out, err = capsys.readouterr()
  assert err == "" and out.startswith(f"usage: isoflop {name} ")
  assert list(tmp_path.iterdir()) == []


def test_flags_show_their_help_strings(capsys):
  assert cli.main(["isoflop", "train", "--help"]) == 0
  out = capsys.readouterr().out
  assert "--config=<file.py> plus --config.a.b=value overrides" in out
  assert "--workdir=<string>\n      run directory" in out
  assert "--[no]dry_run" in out
  assert cli.main(["isoflop", "bench", "-h"]) == 0
  out = capsys.readouterr().out
  assert "--steps=<int>\n      timed steps (default: 20)" in out
  assert "--flop_convention=<" in out  # an enum lists its choices


@pytest.mark.parametrize("arg", ["--help", "-h", "help"])
def test_top_level_help_lists_every_subcommand(arg, capsys):
  assert cli.main(["isoflop", arg]) == 0
  out, err = capsys.readouterr()
  assert err == "" and out.startswith("usage: isoflop <subcommand>")
  listed = [line.split()[0] for line in out.split("subcommands:\n")[1].split("\n\n")[0]
            .splitlines()]
  assert listed == SUBCOMMANDS  # one line each


def test_no_subcommand_prints_the_same_and_exits_2(capsys):
  assert cli.main(["isoflop", "--help"]) == 0
  expected = capsys.readouterr().out
  assert cli.main(["isoflop"]) == 2
  assert capsys.readouterr().out == expected


def test_unknown_subcommand_suggests_the_nearest(capsys):
  assert cli.main(["isoflop", "trian", "--config=x.py"]) == 2
  out, err = capsys.readouterr()
  assert out == ""
  assert err == (f"isoflop: unknown subcommand 'trian' (did you mean 'train'?); choose one of "
                 f"{sorted(SUBCOMMANDS)}\n")
  assert cli.main(["isoflop", "cordcheck"]) == 2
  assert "(did you mean 'coordcheck'?)" in capsys.readouterr().err
  assert cli.main(["isoflop", "zzz"]) == 2  # nothing close: no suggestion
  err = capsys.readouterr().err
  assert "did you mean" not in err and err.count("\n") == 1
