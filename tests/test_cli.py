import os
import subprocess
import sys

import pytest

from speechdvae.cli import build_parser, main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "speechdvae", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("command", [[], ["data"], ["data", "open"], ["data", "mix"], ["data", "scan"],
                                     ["train"], ["import-official"], ["eval"], ["eval", "resynth"], ["enhance"], ["demo"], ["eval", "enhance"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: speechdvae") and len(out.splitlines()) > 3


def test_open_corpus_without_debian_tools_is_one_clear_error(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))      # no apt-get, dpkg-deb or tar on PATH
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
