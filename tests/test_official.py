"""Import of the official DVAE-SE checkpoints, checked against the authors' reference outputs
(../shared/official-dvae-se/README.md describes the arrays and the tolerances used here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechdvae.checkpoints import load_model
from speechdvae.models import DVAE, Posterior, build_model
from speechdvae.models.losses import gaussian_kl, itakura_saito
from speechdvae.official import CHOSEN_INFERENCE, OfficialImportError, import_official, rename_official_state

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official-dvae-se"
TAGS = [f"{corpus}_{model}" for corpus in ("wsj", "vb") for model in ("vae", "dkf", "rvae", "srnn")]
UTTERANCES = ["utt1", "utt2"]
SHA256 = {  # from the README of the official checkpoints
    "wsj_dkf": "094569b4167921cbad8aad12e640467d3adf5f6928412b5661440e22292d414b",
    "vb_dkf": "c8a182e3fac2fa782f8b441ca5e9f9c78342a42b14fbd7f33c1a9c6eb53c57bd",
    "wsj_rvae": "ad4ec50d669e129b0a0ebb35034cf7f07d6d9e9a87cf9354c04c704a406259ff",
    "vb_rvae": "c56e4d32e8e9f6c73c7d2bb2efd190f756f43a1f25b6f2b944453bf525a34737",
    "wsj_srnn": "bdd8b8518ff56011b098602608640c013b6450cc23cbdb4a2d6aabce212815f8",
    "vb_srnn": "ff2fdfe3fda5104e99318070476e0034b753105b079e0d8c558c716d417e2dfa",
    "wsj_vae": "c1e9a91893d90284e3f1038a6ce33c8b2f16496088c5bce619b4911d9486ff8c",
    "vb_vae": "7fb5338981cbdf1da8d6548cfa99a350d70b29c36731b77759dac386bdabfbc4",
}
PARAMS = {"vae": (138_273, 69_920), "dkf": (516_641, 339_168), "rvae": (1_026_849, 745_504), "srnn": (884_993, 374_400)}
ATOL, RTOL, LOSS_RTOL = 2e-4, 1e-4, 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, official_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("official")
    paths = import_official(OFFICIAL, out)
    return {p.name.removeprefix("official-").replace("-", "_"): p for p in paths}


@pytest.fixture(scope="module")
def models(imported: dict[str, Path]) -> dict[str, DVAE]:
    return {tag: load_model(path, device="cpu") for tag, path in imported.items()}


def reference(tag: str) -> dict[str, np.ndarray]:
    with np.load(OFFICIAL / "reference" / f"{tag}.npz") as data:
        return dict(data)


def check(ours: torch.Tensor, expected: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> None:
    """Compare a (1, T, D) model output with a (T, D) reference array."""
    torch.testing.assert_close(
        ours[0].to(torch.float64), torch.from_numpy(expected).to(torch.float64), atol=atol, rtol=rtol
    )


def losses(s: torch.Tensor, post: Posterior, y_logvar: torch.Tensor, prior: tuple) -> tuple[float, float]:
    """Summed IS divergence and KL. The official KL omits the constant -1/2 per latent coordinate,
    so it exceeds the true KL by T * L / 2; that constant is added back for the comparison."""
    isd = itakura_saito(s.double(), y_logvar.double()).sum().item()
    kl = gaussian_kl(post.z_mean.double(), post.z_logvar.double(), *(p.double() for p in prior)).sum().item()
    return isd, kl + post.z_mean.numel() / 2


def test_all_eight_checkpoints_are_imported_with_metadata(imported: dict[str, Path]) -> None:
    assert sorted(imported) == sorted(TAGS)
    for tag, path in imported.items():
        config = json.loads((path / "config.json").read_text())
        meta = config["metadata"]
        assert path.name == f"official-{tag.replace('_', '-')}"
        assert meta["source_sha256"] == SHA256[tag]
        assert meta["licence"] == "GPL-3.0" and (path / "LICENSE.txt").is_file()
        assert meta["training_corpus"] == ("WSJ0" if tag.startswith("wsj") else "VoiceBank")
        assert config["training_data"].startswith(meta["training_corpus"])
        assert config["model"]["name"] == tag.split("_")[1]
        assert config.get("inference") == CHOSEN_INFERENCE.get(tag)  # the settings chosen for it, if any
    assert load_model(imported["wsj_dkf"], device="cpu").enhancer().settings.engine == "langevin"


@pytest.mark.parametrize("tag", TAGS)
def test_parameter_counts(models: dict[str, DVAE], tag: str) -> None:
    model = models[tag]
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.encoder_parameters())
    assert (total, encoder) == PARAMS[model.name]


@pytest.mark.parametrize("utt", UTTERANCES)
@pytest.mark.parametrize("tag", TAGS)
@torch.no_grad()
def test_deterministic_path_matches_the_reference(models: dict[str, DVAE], tag: str, utt: str) -> None:
    model, ref = models[tag], reference(tag)
    get = lambda key: ref[f"{utt}_{key}"]  # noqa: E731
    s = torch.from_numpy(get("power"))[None]
    post, dec = model(s, sample=False, feedback=0.0)
    prefix = "tf_" if model.name == "srnn" else ""
    check(post.z_mean, get("z_mean"))
    check(post.z_logvar, get("z_logvar"))
    check(dec.prior_mean, get(f"{prefix}z_mean_p"))
    check(dec.prior_logvar, get(f"{prefix}z_logvar_p"))
    check(dec.y_logvar, get(f"{prefix}y_logvar"))
    features = {"dkf": {"g": "g"}, "rvae": {"g_x": "g_x"}, "srnn": {"h": "tf_h", "g": "g"}}.get(model.name, {})
    for ours, theirs in features.items():
        check(post.cache[ours], get(theirs))
    isd, kl = losses(s, post, dec.y_logvar, (dec.prior_mean, dec.prior_logvar))
    assert isd == pytest.approx(float(get(f"{prefix}loss_isd")), rel=LOSS_RTOL)
    assert kl == pytest.approx(float(get(f"{prefix}loss_kld")), rel=LOSS_RTOL)


@pytest.mark.parametrize("utt", UTTERANCES)
@pytest.mark.parametrize("tag", ["wsj_srnn", "vb_srnn"])
@torch.no_grad()
def test_srnn_generation_mode(models: dict[str, DVAE], tag: str, utt: str) -> None:
    """Generation feeds exp(y) back and amplifies rounding: float64 is compared tightly with the
    float64 reference, float32 only over the first frames."""
    model, ref = models[tag], reference(tag)
    get = lambda key: ref[f"{utt}_{key}"]  # noqa: E731
    s = torch.from_numpy(get("power"))[None]
    dec32 = model.decode(model.infer(s, sample=False), s, feedback=1.0)
    check(dec32.y_logvar[:, :10], get("gen_y_logvar")[:10], atol=1e-4, rtol=0)
    model64 = build_double(model)
    s64 = s.double()
    post = model64.infer(s64, sample=False)
    dec = model64.decode(post, s64, feedback=1.0)
    check(dec.y_logvar, get("gen_y_logvar_f64"), atol=1e-8, rtol=0)
    check(dec.prior_mean, get("gen_z_mean_p_f64"), atol=1e-8, rtol=0)
    check(dec.prior_logvar, get("gen_z_logvar_p_f64"), atol=1e-8, rtol=0)
    isd, kl = losses(s64, post, dec.y_logvar, (dec.prior_mean, dec.prior_logvar))
    assert isd == pytest.approx(float(get("gen_loss_isd")), rel=1e-2)
    assert kl == pytest.approx(float(get("gen_loss_kld")), rel=1e-2)


def build_double(model: DVAE) -> DVAE:
    copy = build_model(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.double().eval()


@pytest.mark.parametrize("utt", UTTERANCES)
@pytest.mark.parametrize("tag", TAGS)
@torch.no_grad()
def test_sampled_path_reproduces_the_seeded_reference(models: dict[str, DVAE], tag: str, utt: str) -> None:
    """Same RNG order as the official code: the samples themselves are reproduced; given the
    reference samples, the prior and the decoder are deterministic."""
    model, ref = models[tag], reference(tag)
    get = lambda key: ref[f"{utt}_sampled_{key}"]  # noqa: E731
    s = torch.from_numpy(ref[f"{utt}_power"])[None]
    prefix = "tf_" if model.name == "srnn" else ""
    torch.manual_seed(0)
    post = model.infer(s, sample=True)
    check(post.z, get("z"))
    check(post.z_mean, get("z_mean"))
    check(post.z_logvar, get("z_logvar"))
    z = torch.from_numpy(get("z"))[None]
    dec = model.decode(Posterior(z, post.z_mean, post.z_logvar), s, feedback=0.0)
    check(dec.prior_mean, get(f"{prefix}z_mean_p"))
    check(dec.prior_logvar, get(f"{prefix}z_logvar_p"))
    check(dec.y_logvar, get(f"{prefix}y_logvar"))


def test_shape_and_key_mismatches_are_rejected(models: dict[str, DVAE]) -> None:
    pt = next((OFFICIAL / "trained_models" / "wsj_dkf").glob("*.pt"))
    state = torch.load(pt, map_location="cpu", weights_only=True)
    model = models["wsj_dkf"]
    assert set(rename_official_state(state, model, pt)) == set(model.state_dict())
    wrong_shape = dict(state, **{"inf_mean.weight": torch.zeros(16, 33)})
    with pytest.raises(OfficialImportError, match=r"DKF_final_epoch295.pt: inf_mean.weight has shape \(16, 33\)"):
        rename_official_state(wrong_shape, model, pt)
    with pytest.raises(OfficialImportError, match="unexpected parameter 'extra.weight'"):
        rename_official_state(dict(state, **{"extra.weight": torch.zeros(1)}), model, pt)
    incomplete = {k: v for k, v in state.items() if k != "prior_mean.bias"}
    with pytest.raises(OfficialImportError, match="missing.*transition.linear_mean.bias"):
        rename_official_state(incomplete, model, pt)


def test_import_of_a_folder_without_checkpoints_fails(tmp_path: Path) -> None:
    with pytest.raises(OfficialImportError, match="no trained_models"):
        import_official(tmp_path, tmp_path / "out")
