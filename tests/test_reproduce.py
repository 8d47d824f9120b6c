"""`make reproduce` (recipes/reproduce.py): every committed report names a command the CLI accepts, and the plan
lists them all."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from speechdvae.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "recipes" / "reproduce.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reproduce = load_script()
REPORTS = [step for step in reproduce.STEPS if step.report]


@pytest.mark.parametrize("step", REPORTS, ids=[step.name for step in REPORTS])
def test_each_report_names_a_command_the_cli_accepts(step):
    argv = reproduce.report_command(ROOT / step.report)
    assert argv[0] == "speechdvae"
    args = build_parser().parse_args(argv[1:])
    # the report regenerates itself where it lies
    assert Path(args.out) == Path(step.report).parent


def test_a_report_without_a_command_is_reported(tmp_path: Path):
    report = tmp_path / "report.md"
    report.write_text("# A report\n\nno command here\n")
    with pytest.raises(SystemExit, match="no 'Regenerate with' command"):
        reproduce.report_command(report)
    with pytest.raises(SystemExit, match="missing"):
        reproduce.report_command(tmp_path / "absent.md")


def test_the_dry_run_plans_every_step_with_a_time_estimate():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "min on a 2-core CPU" in done.stdout
    optional = {step.name for step in reproduce.STEPS if step.needs and not (ROOT / step.needs).exists()}
    for step in reproduce.STEPS:
        assert (f"  {step.name} " in done.stdout) == (step.name not in optional)


def test_without_the_official_release_its_models_leave_the_commands():
    command = [
        "speechdvae",
        "eval",
        "enhance",
        "--model",
        "A=checkpoints/open-small/vae/model",
        "--model",
        "official WSJ0 RVAE=checkpoints/official/official-wsj-rvae",
        "--manifest",
        "m.jsonl",
        "-o",
        "out",
    ]
    assert reproduce.without_official_models(command) == [
        "speechdvae",
        "eval",
        "enhance",
        "--model",
        "A=checkpoints/open-small/vae/model",
        "--manifest",
        "m.jsonl",
        "-o",
        "out",
    ]
    listen = reproduce.report_command(ROOT / "docs/listen/index.html")
    assert any("checkpoints/official/" in arg for arg in listen)
    assert not any("checkpoints/official/" in arg for arg in reproduce.without_official_models(listen))
