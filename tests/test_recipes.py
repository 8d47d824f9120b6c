"""The decisions the recipes make: the inference-settings rule (recipes/vem_settings.py), when a training
lineage is done (recipes/train_campaign.py) and how the training report states it (recipes/training_report.py),
the paired comparison of report rows (recipes/paired.py), the resynthesis metrics by utterance length
(recipes/by_length.py) and the decoders' dependence on the past (recipes/past_dependence.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


vem_settings = load("vem_settings")
train_campaign = load("train_campaign")
training_report = load("training_report")  # after train_campaign, which it imports
paired = load("paired")
by_length = load("by_length")
past_dependence = load("past_dependence")


def candidate(si_sdr: float, estoi: float, seconds: float, niter: int = 30, **settings):
    rows = [
        {
            "si_sdr_improvement": str(si_sdr),
            "estoi_improvement": str(estoi),
            "seconds": str(seconds),
            "duration": "1",
            "length": "",
            "speaker": "",
        }
    ]
    return vem_settings.Candidate("prior", Path("report"), {"engine": "vem", "niter": niter, **settings}, rows)


def test_the_default_stays_near_the_official_and_the_best_settings():
    official = candidate(2.0, -0.05, 100.0, niter=300)
    fast_but_poor = candidate(2.1, 0.0, 1.0)  # passes the official settings, 3 dB below the best
    near_best = candidate(4.9, 0.0, 5.0)
    best = candidate(5.0, 0.005, 9.0, niter=100)
    options = [official, fast_but_poor, near_best, best]
    passes, chosen = vem_settings.verdicts(official, best, options)
    assert vem_settings.best_setting(options) is best
    assert chosen is near_best
    assert [passes[id(c)] for c in options] == [False, False, True, True]
    # the ESTOI margin binds as well
    lower_estoi = candidate(4.95, -0.011, 2.0)
    passes, chosen = vem_settings.verdicts(official, best, options + [lower_estoi])
    assert not passes[id(lower_estoi)] and chosen is near_best


def test_a_report_without_a_newer_setting_ran_it_at_its_default():
    official = dict(vem_settings.OFFICIAL)
    assert candidate(0, 0, 1, **{k: v for k, v in official.items() if k not in ("engine", "precision")}).official
    assert not candidate(0, 0, 1, **{**official, "niter": 30}).official


def write_log(run: Path, rows: list[tuple[int, int, bool]], max_steps: int | None = None) -> Path:
    (run / "model").mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "step": s, "best": b}) + "\n" for e, s, b in rows))
    config = {"metadata": {"training": {"train": {"max_steps": max_steps}}}}
    (run / "model" / "config.json").write_text(json.dumps(config))
    return run


def test_patience_is_counted_in_steps_whatever_the_epoch(tmp_path: Path):
    steps = train_campaign.PATIENCE_STEPS
    # epochs of 310 steps (speed perturbation): the patience in epochs shrinks accordingly
    for epoch, known in ((310, 310), (train_campaign.EPOCH_STEPS, None)):
        epochs = train_campaign.patience_epochs(known)
        assert (epochs - 1) * epoch < steps <= epochs * epoch
    short = write_log(tmp_path / "a", [(0, 310, True), (1, 620, True), (2, 930, False)])
    assert train_campaign.epoch_steps(short) == 310
    assert not train_campaign.finished(short)
    stale = write_log(tmp_path / "b", [(0, 310, True), (5, 1860, True), (90, 1860 + steps, False)])
    assert train_campaign.finished(stale)
    # a step schedule ends its lineage when its budget is used up
    assert train_campaign.finished(write_log(tmp_path / "c", [(0, 600, True), (1, 1200, True)], max_steps=1200))
    assert not train_campaign.finished(write_log(tmp_path / "d", [(0, 600, True), (1, 1200, True)], max_steps=1300))


def test_an_ended_lineage_starts_no_stage(tmp_path: Path, monkeypatch):
    published, runs = tmp_path / "published", tmp_path / "runs"
    for name in ("x", "x.2"):
        write_log(published / name, [(0, 310, True), (1, 620, True)])

    def command(ended: dict[str, int]):
        monkeypatch.setattr(train_campaign, "ENDED", ended)
        return train_campaign.stage_command("x", "dkf", "paper", {}, runs, published, tmp_path / "data")

    name, argv = command({})
    assert name == "x.3" and f"train.init_from={published / 'x.2' / 'model'}" in argv
    assert command({"x": 3})[0] == "x.3"  # ends after a stage not committed yet
    assert command({"x": 2}) is None


def test_the_training_report_states_how_each_run_ended(monkeypatch):
    monkeypatch.setattr(training_report, "ENDED", {"x": 2})
    rows = [{"epoch": 0, "step": 310, "best": True}, {"epoch": 1, "step": 620, "best": False}]
    train = {"train": {"early_stop_patience": 1}}
    assert training_report.status("x.2", rows, train) == "ended on its flat curve, 1 epoch after its best"
    assert training_report.status("x", rows, train) == "early-stopped"
    schedule = {"lr_schedule": "warmup_cosine", "warmup_steps": 100}
    assert training_report.status("x", rows, {"train": {**schedule, "cosine_steps": 520}}) == "schedule done"
    # stopped before its cosine decay ended
    assert training_report.status("x", rows, {"train": {**schedule, "cosine_steps": 600}}) == "1 epoch since best"
    assert training_report.status("x", rows[:1], {"train": {}}) == "best at last epoch"


def set_options(argv: list[str]) -> list[str]:
    """The values of a command's --set options, in order."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]


def test_a_lane_setting_takes_effect_from_the_stage_it_names(tmp_path: Path):
    published, runs = tmp_path / "published", tmp_path / "runs"
    lanes = {2: ["train.floor_db=-60"], 3: ["train.lr=0.0003"]}

    def settings() -> list[str]:
        name, argv = train_campaign.stage_command("x", "rvae", "paper", lanes, runs, published, tmp_path / "data")
        return set_options(argv)

    write_log(published / "x", [(0, 310, True), (1, 620, True)])
    assert "train.floor_db=-60" in settings() and "train.lr=0.0003" not in settings()  # stage 2
    write_log(published / "x.2", [(0, 310, True), (1, 620, True)])
    assert {"train.floor_db=-60", "train.lr=0.0003"} <= set(settings())  # stage 3 keeps stage 2's setting


def test_srnn_trains_teacher_forced_then_with_scheduled_sampling(tmp_path: Path):
    published, runs = tmp_path / "published", tmp_path / "runs"
    (lane,) = [lane for lane in train_campaign.LANES if any(entry[0] == "srnn" for entry in lane)]
    _, preset, size, overrides = next(entry for entry in lane if entry[0] == "srnn")

    def settings() -> dict[str, str]:  # the value each key ends with: the trainer applies --set in order
        _, argv = train_campaign.stage_command("srnn", preset, size, overrides, runs, published, tmp_path / "data")
        return dict(setting.split("=", 1) for setting in set_options(argv))

    first = settings()
    assert first["train.epochs"] == "60" and "train.ss_start_epoch" not in first
    write_log(published / "srnn", [(0, 310, True), (59, 18600, True)])
    second = settings()
    assert second["train.epochs"] == str(train_campaign.EPOCHS) and second["train.ss_start_epoch"] == "0"
    assert second["train.floor_db"] == "-60" and second["train.init_from"] == str(published / "srnn" / "model")


def write_report(folder: Path, rows: dict[str, list[tuple[str, float, float]]]) -> Path:
    """An `eval enhance` report folder whose utterance table holds `rows`: label -> (id, SI-SDR, ESTOI)."""
    folder.mkdir()
    with (folder / "enhancement_utterances.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "model", "si_sdr", "pesq_wb", "estoi", "error"])
        writer.writeheader()
        for label, scores in rows.items():
            for key, si_sdr, estoi in scores:
                writer.writerow({"id": key, "model": label, "si_sdr": si_sdr, "pesq_wb": "", "estoi": estoi})
    return folder


def test_paired_differences_are_taken_mixture_by_mixture(tmp_path: Path):
    ids = [f"m{i}" for i in range(20)]
    base = [(k, float(i), 0.5) for i, k in enumerate(ids)]
    # the row is 1 dB better on every mixture but the last two, and ESTOI equal; one mixture only in the row
    better = [(k, s + (1.0 if i < 18 else -0.5), e) for i, (k, s, e) in enumerate(base)] + [("extra", 99.0, 1.0)]
    a = paired.scores(write_report(tmp_path / "a", {"row": better, "other": base}), "row")
    b = paired.scores(write_report(tmp_path / "b", {"ref": base}), "ref")
    stats = paired.compare(a, b)
    assert set(stats) == {"si_sdr", "estoi"}  # PESQ-WB is empty in both
    s = stats["si_sdr"]
    assert s["n"] == 20 and s["better"] == 18 and s["median"] == 1.0
    assert abs(s["mean"] - (18 * 1.0 - 2 * 0.5) / 20) < 1e-12 and s["p"] < 0.01
    assert stats["estoi"]["better"] == 0 and stats["estoi"]["p"] == 1.0
    assert paired.compare(a, a)["si_sdr"]["p"] == 1.0


def test_utterances_fall_in_the_bin_of_their_recorded_length(tmp_path: Path):
    with open(tmp_path / "resynthesis_utterances.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "model", "mode", "si_sdr"])
        writer.writeheader()
        for uid, value in (("a", "1"), ("b", "3"), ("c", "5"), ("d", ""), ("e", "-2")):
            writer.writerow({"id": uid, "model": "m", "mode": "GT", "si_sdr": value})
    durations = {"a": 0.5, "b": 0.8, "c": 1.0, "d": 3.0, "e": 3.0}
    bins = by_length.by_length(tmp_path, durations, [0.8, 2.4], "si_sdr")
    assert bins == {("m", "GT"): [[1.0], [3.0, 5.0], [-2.0]]}  # an edge opens the next bin; no value, no entry
    assert by_length.bin_labels([0.8, 2.4]) == ["< 0.8 s", "0.8–2.4 s", "≥ 2.4 s"]


def test_the_pasts_differ_only_in_what_the_decoder_reads():
    import torch
    from conftest import tiny_model

    model = tiny_model("transformer")
    power = torch.rand(1, 12, 513) + 0.1
    out = past_dependence.variances(model, power, torch.Generator().manual_seed(0))
    assert list(out) == list(past_dependence.PASTS)
    post = model.infer(power, sample=False)
    assert torch.allclose(out["true"], model.decode(post, power).y_logvar.exp())
    assert torch.allclose(out["generated"], model.decode(post, power, feedback=1.0).y_logvar.exp())
    assert torch.allclose(out["own-step"], model.decode(post, out["true"]).y_logvar.exp())
    assert not torch.allclose(out["shuffled"], out["true"])
    assert torch.allclose(out["shuffled"][:, 0], out["true"][:, 0])  # the first frame reads no past
