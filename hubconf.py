"""torch.hub entry points: a trained model, ready to use, from a checkpoint file or a folder that
`--mode export` wrote (model.safetensors + config.json).

    import torch
    ddpm = torch.hub.load("path/to/ImageAudioGen", "image_ddpm", source="local", path="exported/ddpm")
    digits = ddpm.sample(classes=[7], per_class=8)            # (8, 1, 28, 28) in [0, 1], infer's pixels
    music = torch.hub.load("path/to/ImageAudioGen", "audio_autoencoder", source="local", path="exported/vae")
    log_mels, waves = music.generate(2, seed=0)              # (2, 128, 256), (2, 80000) at 16 kHz

The weights are your own (nothing is downloaded): train with image_gen/train.sh or audio_gen/train.sh and
export with `--mode export --checkpoint FILE --export_dir DIR`.
"""
import sys
from pathlib import Path

dependencies = ["torch", "torchaudio", "safetensors", "numpy", "scipy", "av", "soundfile"]

_ROOT = Path(__file__).resolve().parent
try:
    import audiogen  # noqa: F401  installed (pip install -e .)
    import imagegen  # noqa: F401
except ImportError:  # a plain clone: torch.hub puts only the repository root on the path
    sys.path[:0] = [str(_ROOT / "image_gen"), str(_ROOT / "audio_gen")]


def image_ddpm(path, device="cpu"):
    """The class-conditional DDPM at `path` (checkpoint or exported folder): an imagegen.pretrained.ImageGenerator
    whose .sample(classes, per_class, settings) draws with DDIM-50 at the checkpoint's own guidance by default."""
    from imagegen.pretrained import ImageGenerator
    return ImageGenerator.load(path, device, kind="ddpm", asked_by="hubconf image_ddpm")


def image_gan(path, device="cpu"):
    """The GAN at `path` (checkpoint or exported folder): an ImageGenerator that draws in one generator pass."""
    from imagegen.pretrained import ImageGenerator
    return ImageGenerator.load(path, device, kind="gan", asked_by="hubconf image_gan")


def audio_autoencoder(path, device="cpu", inverse="pghi", vocoder=None, prior=None):
    """The mel autoencoder or VAE at `path` (checkpoint or exported folder): an audiogen.pretrained.MusicAutoencoder
    with .reconstruct(clip) and, for a VAE, .generate(count, seed). `inverse`: how its mels become audio ('pghi',
    'griffinlim', 'vocoder', 'vocoder-pghi', 'vocoder-refined': the last needs a vocoder with a phase refiner);
    `vocoder` and `prior` default to those an exported folder pairs with."""
    from audiogen.inverse import InverseConfig
    from audiogen.pretrained import MusicAutoencoder
    return MusicAutoencoder.load(path, device, InverseConfig(inverse, vocoder=Path(vocoder) if vocoder else None),
                                 Path(prior) if prior else None)
