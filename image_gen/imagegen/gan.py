"""A class-conditional GAN for 28x28 images: a DCGAN-style generator, a projection discriminator
(Miyato & Koyama 2018) with spectral normalisation (Miyato et al. 2018), and the losses: hinge
(Lim & Ye 2017), non-saturating (Goodfellow et al. 2014), the R1 penalty (Mescheder et al. 2018) and the
mode-seeking term (Mao et al. 2019).
Networks and math only; the training state lives in gan_training, the drawing in sampling.GanSampler."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

GAN_LOSSES = ("hinge", "nonsaturating")


class Generator(nn.Module):
    """G(z, y): latent z (batch, latent_dim) and class y (batch,) -> images (batch, C, 28, 28) in [-1, 1].

    The class enters as a learned embedding concatenated to z. Then a linear map to 4b x 7 x 7 and two
    DCGAN stages (4x4 transposed conv, stride 2) to 2b x 14 x 14 and b x 28 x 28, b = base_channels, and
    a 3x3 conv to the image through tanh (nearest up-sampling + 3x3 conv would cost 2.3x the multiply-adds).
    GroupNorm rather than DCGAN's BatchNorm: an image depends on its own latent only, so a seed draws the
    same digit in any batch, and the EMA weights need no batch statistics. num_classes = 0: unconditional."""

    def __init__(self, latent_dim=128, base_channels=32, num_classes=10, image_channels=1):
        super().__init__()
        self.config = {"latent_dim": latent_dim, "base_channels": base_channels, "num_classes": num_classes,
                       "image_channels": image_channels}
        self.latent_dim, self.num_classes = latent_dim, num_classes
        b = base_channels
        embed_dim = latent_dim if num_classes else 0
        self.class_embedding = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.project = nn.Linear(latent_dim + embed_dim, 4 * b * 7 * 7)
        self.body = nn.Sequential(
            nn.GroupNorm(8, 4 * b), nn.ReLU(),
            nn.ConvTranspose2d(4 * b, 2 * b, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * b), nn.ReLU(),  # 14
            nn.ConvTranspose2d(2 * b, b, 4, stride=2, padding=1), nn.GroupNorm(8, b), nn.ReLU(),          # 28
            nn.Conv2d(b, image_channels, 3, padding=1), nn.Tanh())
        self.base_channels = b

    def forward(self, z, labels=None):
        if self.class_embedding is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: it needs labels (it has no null class)")
            z = torch.cat([z, self.class_embedding(labels)], dim=1)
        elif labels is not None:
            raise ValueError("this generator is unconditional: it takes no labels")
        h = self.project(z).view(len(z), 4 * self.base_channels, 7, 7)
        return self.body(h)


class Discriminator(nn.Module):
    """D(x, y) -> a real-valued score (batch,), high for real images.

    phi(x): three spectrally normalised strided convs (28 -> 14 -> 7 -> 4; 2b, 4b, 8b channels, leaky ReLU),
    summed over space. Projection conditioning (Miyato & Koyama 2018, eq. 3): D(x, y) = psi(phi(x)) +
    <embed(y), phi(x)>, so the class acts as an inner product with the features rather than an input
    channel. Spectral norm on every layer bounds D's Lipschitz constant, the stabiliser the GAN relies on."""

    def __init__(self, base_channels=32, num_classes=10, image_channels=1):
        super().__init__()
        self.config = {"base_channels": base_channels, "num_classes": num_classes, "image_channels": image_channels}
        self.num_classes = num_classes
        b = base_channels
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(image_channels, 2 * b, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # 14
            spectral_norm(nn.Conv2d(2 * b, 4 * b, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),            # 7
            spectral_norm(nn.Conv2d(4 * b, 8 * b, 3, stride=2, padding=1)), nn.LeakyReLU(0.2))            # 4
        self.psi = spectral_norm(nn.Linear(8 * b, 1))
        self.class_embedding = spectral_norm(nn.Embedding(num_classes, 8 * b)) if num_classes else None

    def forward(self, x, labels=None):
        phi = self.features(x).sum(dim=(2, 3))
        score = self.psi(phi).squeeze(1)
        if self.class_embedding is not None:
            score = score + (self.class_embedding(labels) * phi).sum(dim=1)
        return score


def discriminator_loss(real_scores, fake_scores, kind):
    """The discriminator's loss on D's scores of real and generated images (batch,), averaged:

        hinge:          E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]       (Lim & Ye 2017)
        nonsaturating:  E[softplus(-D(x))] + E[softplus(D(G(z)))]
                        = E[-log sigmoid(D(x))] + E[-log(1 - sigmoid(D(G(z))))]   (Goodfellow et al. 2014)"""
    if kind == "hinge":
        return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
    if kind == "nonsaturating":
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    raise ValueError(f"unknown GAN loss {kind!r}: expected one of {', '.join(GAN_LOSSES)}")


def generator_loss(fake_scores, kind):
    """The generator's loss on D's scores of its images: hinge -E[D(G(z))]; non-saturating
    E[softplus(-D(G(z)))] = -E[log sigmoid(D(G(z)))] (Goodfellow et al. 2014, section 3)."""
    if kind == "hinge":
        return -fake_scores.mean()
    if kind == "nonsaturating":
        return F.softplus(-fake_scores).mean()
    raise ValueError(f"unknown GAN loss {kind!r}: expected one of {', '.join(GAN_LOSSES)}")


def r1_penalty(real_scores, real_images):
    """E[||grad_x D(x)||^2] over real images (Mescheder et al. 2018, eq. 9, without the gamma / 2);
    `real_images` must require grad and `real_scores` be computed from them. Differentiable (double backprop)."""
    (grad,) = torch.autograd.grad(real_scores.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


def mode_seeking_loss(images_1, images_2, z_1, z_2, eps=1e-5):
    """MSGAN's mode-seeking term (Mao et al. 2019, Eq. 3), as a loss to minimise: 1 / (d_I / d_z), where
    d_I = mean |G(z_1, y) - G(z_2, y)| over two images of the same classes and d_z = mean |z_1 - z_2|. A
    generator that draws one image per class whatever z (mode collapse) has d_I -> 0 and a loss that grows
    without bound, so it pays to make different latents give different images."""
    ratio = (images_1 - images_2).abs().mean() / (z_1 - z_2).abs().mean()
    return 1.0 / (ratio + eps)
