"""Clip embeddings from the DNSMOS network, the feature space of the FD-DNSMOS generation metric.

The network is Microsoft's DNSMOS P.835 model (`sig_bak_ovr.onnx`) as shipped in the PyPI package `speechmos`,
run with onnxruntime. It frames 16 kHz audio into 20-ms windows (hop 10 ms), takes a log power spectrum, runs
seven convolution layers and max-pools the last one (64 channels) over time and frequency; a small MLP head then
predicts the SIG/BAK/OVRL scores. The embedding used here is that pooled 64-d vector: one vector per clip, read
by the MOS head, with every unit active on speech (the head's own hidden layers have many dead ReLU units).

The published graph accepts exactly 9.01 s (144,160 samples). Its convolutional part does not depend on the
length, so the framing is rewritten to take any multiple of 160 samples and each clip is embedded at its own
length (a 1.6-s clip gives 159 frames), instead of being tiled to 9.01 s as `speechmos` does for short inputs:
tiling costs 5.6 times more and adds seams that are not in the clip. On 9.01-s inputs the rewritten graph gives
the published graph's values exactly; on 1.6-s speech its embeddings correlate at about 0.98 with those of the
tiled clip.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import numpy as np

from ..errors import MissingExtra

FEATURE_LAYER = "mos_estimator_logpow/global_max_pooling2d/Max:0"
FEATURE_DIM = 64
MODEL_FILE = ("dnsmos_models", "sig_bak_ovr.onnx")
FRAME_HOP = 160  # samples between DNSMOS frames (the network's framing)
MIN_FRAMES = 9  # three 2x max-poolings in time need at least 8 frames after framing
PUBLISHED_SAMPLES = 144_160  # the input length fixed in the published graph (9.01 s)
BATCH_CLIPS = 16  # clips per onnxruntime call
INSTALL_HINT = "pip install 'speechdvae[dnsmos]'"
# The initializers that fix the input length: the end of the first framing slice and the two reshapes.
_SLICE_END = "input_1:01_cropping_end"
_RESHAPES = ("shape_tensor", "shape_tensor1")


class DnsmosUnavailable(MissingExtra):
    """The optional DNSMOS packages (speechmos, onnxruntime, onnx) are not installed."""


def _import_optional() -> tuple[Any, Any]:
    """The `onnx` and `onnxruntime` modules, or one clear error naming the extra to install."""
    try:
        import onnx
        import onnxruntime

        resources.files("speechmos")
    except ImportError as err:
        raise DnsmosUnavailable(
            f"FD-DNSMOS needs the DNSMOS network and its runtime ({err.name} is missing): {INSTALL_HINT}"
        ) from err
    return onnx, onnxruntime


def model_bytes() -> bytes:
    """The published DNSMOS P.835 ONNX file shipped by `speechmos`."""
    _import_optional()
    path = resources.files("speechmos").joinpath(*MODEL_FILE)
    if not path.is_file():
        raise DnsmosUnavailable(f"the installed speechmos has no {'/'.join(MODEL_FILE)}: {INSTALL_HINT}")
    return path.read_bytes()


def feature_graph(published: bytes) -> Any:
    """The DNSMOS graph rewritten to accept any multiple of 160 samples and to output the clip embedding."""
    onnx, _ = _import_optional()
    from onnx import numpy_helper

    model = onnx.load_from_string(published)
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    replacements = {
        _SLICE_END: [np.iinfo(np.int64).max, -FRAME_HOP],  # x[:, :-160] instead of x[:, :144000]
        **{name: [0, -1, FRAME_HOP] for name in _RESHAPES},
    }  # (batch, any frames, 160)
    for name, value in replacements.items():
        constants[name].CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
    length = model.graph.input[0].type.tensor_type.shape.dim[1]
    length.Clear()
    length.dim_param = "samples"
    del model.graph.output[:]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(FEATURE_LAYER, onnx.TensorProto.FLOAT, ["batch", FEATURE_DIM])
    )
    return model


class DnsmosFeatures:
    """Embeds batches of 16 kHz clips into 64-d DNSMOS vectors (see the module docstring)."""

    def __init__(self, threads: int | None = None) -> None:
        _, ort = _import_optional()
        published = model_bytes()
        self.identity = hashlib.sha256(published + FEATURE_LAYER.encode()).hexdigest()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(feature_graph(published).SerializeToString(), options, providers=providers)

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        """(B, N) waveforms -> (B, 64) float64 embeddings; samples past the last multiple of 160 are ignored."""
        waves = np.asarray(waves, dtype=np.float32)
        if waves.ndim != 2:
            raise ValueError(f"expected a (clips, samples) array, got shape {waves.shape}")
        frames = waves.shape[1] // FRAME_HOP
        if frames < MIN_FRAMES:
            raise ValueError(f"clips too short for DNSMOS: {waves.shape[1]} samples, need {MIN_FRAMES * FRAME_HOP}")
        waves = np.ascontiguousarray(waves[:, : frames * FRAME_HOP])
        out = [
            self.session.run([FEATURE_LAYER], {"input_1": waves[i : i + BATCH_CLIPS]})[0]
            for i in range(0, len(waves), BATCH_CLIPS)
        ]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, FEATURE_DIM))
