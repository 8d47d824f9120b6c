import argparse
import os
import subprocess
import sys

import pytest

from speechdvae.cli import build_parser, main


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "speechdvae", *args], capture_output=True, text=True, env=env, timeout=120
    )


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command and sub-command of `parser`, read from the parser itself."""
    found = [list(prefix)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*prefix, name))
    return found


COMMANDS = commands(build_parser())


def test_the_commands_are_read_from_the_parser():
    assert {("enhance",), ("eval", "generate"), ("eval", "listen"), ("baseline", "train")} <= set(map(tuple, COMMANDS))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "speechdvae")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: speechdvae") and len(out.splitlines()) > 3


def test_open_corpus_without_debian_tools_is_one_clear_error(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no apt-get, dpkg-deb or tar on PATH
    result = run_cli("data", "open", "--root", str(tmp_path / "corpus"), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("speechdvae: error:") and "apt-get" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_with_missing_data_fails_before_any_work(tmp_path):
    result = run_cli("train", "--preset", "vae", "--data-root", str(tmp_path / "nothing"), "-o", str(tmp_path / "run"))
    assert result.returncode == 2 and "manifest not found" in result.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_preset_lists_the_available_ones(tmp_path):
    result = run_cli("train", "--preset", "nope", "--train", __file__, "--valid", __file__, "-o", str(tmp_path / "r"))
    assert result.returncode == 2 and "available presets" in result.stderr and "srnn-ss" in result.stderr


def test_parser_knows_every_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"data", "train", "import-official"} <= set(sub.choices)
