import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import speechdvae
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


def test_the_library_never_imports_the_command_line():
    """Only modules of speechdvae.cli (and __main__) import it: the library stays usable without argparse."""
    root = Path(speechdvae.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if relative.parts[0] == "cli" or relative.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                absolute = node.module or ""
                if node.level:  # resolve `from ..cli import x` against the module's package
                    package = relative.parent.parts[: len(relative.parent.parts) - node.level + 1]
                    absolute = ".".join(["speechdvae", *package, *([absolute] if absolute else [])])
                names = [absolute, *(f"{absolute}.{alias.name}" for alias in node.names)]
                if any(name == "speechdvae.cli" or name.startswith("speechdvae.cli.") for name in names):
                    offenders.append(str(relative))
    assert offenders == []


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    """Each module imported first, with no speechdvae module loaded before it: an import cycle would fail
    whichever module of it comes first. One interpreter; third-party modules stay loaded between imports."""
    root = Path(speechdvae.__file__).parent
    modules = sorted(
        ".".join(("speechdvae", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for path in root.rglob("*.py")
        if path.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'speechdvae' or m.startswith('speechdvae.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300)
    assert len(modules) > 40 and result.returncode == 0, result.stderr[-2000:]
