"""The four non-reference losses of Zero-DCE, as in the authors' ``Myloss.py`` and training loop.

Zero-DCE trains without reference images. The total loss is

    W_tv * L_tv(A) + W_spa * L_spa(I, Y) + W_col * L_col(Y) + W_exp * L_exp(Y)

with ``I`` the input, ``Y`` the enhanced image and ``A`` the curve maps; the authors' weights are
200, 1, 5 and 10 for DCE-Net (Zero-DCE++ uses 1600 for the smoothness term).

One deliberate difference: the colour-constancy loss takes a square root of a sum of squares,
whose gradient is NaN where that sum is exactly zero (a perfectly grey image, or a constant
input such as padding). :func:`color_constancy_loss` uses a square root whose gradient is 0
there, so the value is unchanged and the gradient stays finite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "LossWeights",
    "ZeroDCELoss",
    "color_constancy_loss",
    "exposure_control_loss",
    "illumination_smoothness_loss",
    "spatial_consistency_loss",
]


def spatial_consistency_loss(original: torch.Tensor, enhanced: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """Keep the contrast between neighbouring regions: ``L_spa``.

    Both images are averaged over channels and over ``pool`` x ``pool`` regions; for each region
    the differences to its 4 neighbours (zero-padded at the border, as the authors' conv kernels
    do) must be the same before and after enhancement. Returns the mean over regions and batch.
    """
    org = F.avg_pool2d(original.mean(1, keepdim=True), pool)
    enh = F.avg_pool2d(enhanced.mean(1, keepdim=True), pool)
    total = org.new_zeros(())
    for d_org, d_enh in zip(_neighbour_differences(org), _neighbour_differences(enh)):
        total = total + (d_org - d_enh).pow(2).mean()
    return total


def _neighbour_differences(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``x - neighbour`` towards left, right, up and down, with zeros outside the border."""
    p = F.pad(x, (1, 1, 1, 1))
    centre = p[..., 1:-1, 1:-1]
    return (
        centre - p[..., 1:-1, :-2],  # left
        centre - p[..., 1:-1, 2:],  # right
        centre - p[..., :-2, 1:-1],  # up
        centre - p[..., 2:, 1:-1],  # down
    )


def exposure_control_loss(enhanced: torch.Tensor, patch: int = 16, target: float = 0.6) -> torch.Tensor:
    """Pull the mean brightness of each ``patch`` x ``patch`` region towards ``target``: ``L_exp``.

    A constant image of value c gives exactly ``(c - target)^2``.
    """
    means = F.avg_pool2d(enhanced.mean(1, keepdim=True), patch)
    return (means - target).pow(2).mean()


def color_constancy_loss(enhanced: torch.Tensor) -> torch.Tensor:
    """Grey-world colour constancy: ``L_col``, zero when the channel means are equal.

    The authors' form ``sqrt((Drg^2 + Drb^2 + Dgb^2))`` with ``Dxy = (mean_x - mean_y)^2``,
    averaged over the batch.
    """
    mean_rgb = enhanced.mean((2, 3))
    r, g, b = mean_rgb.unbind(1)
    d_rg = (r - g).pow(2)
    d_rb = (r - b).pow(2)
    d_gb = (b - g).pow(2)
    return _safe_sqrt(d_rg.pow(2) + d_rb.pow(2) + d_gb.pow(2)).mean()


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for x >= 0 whose gradient is 0 (not inf * 0 = NaN) at x == 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def illumination_smoothness_loss(curves: torch.Tensor) -> torch.Tensor:
    """Total variation of the curve maps: ``L_tv`` (the authors' ``L_TV`` with weight 1).

    ``2 * (sum(dh^2) / count_h + sum(dw^2) / count_w) / batch``; constant maps give zero.
    """
    n, _, h, w = curves.shape
    count_h = max((h - 1) * w, 1)
    count_w = max(h * (w - 1), 1)
    h_tv = (curves[:, :, 1:, :] - curves[:, :, :-1, :]).pow(2).sum()
    w_tv = (curves[:, :, :, 1:] - curves[:, :, :, :-1]).pow(2).sum()
    return 2 * (h_tv / count_h + w_tv / count_w) / n


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms and the exposure settings (defaults: the authors' DCE-Net values)."""

    smoothness: float = 200.0
    spatial: float = 1.0
    color: float = 5.0
    exposure: float = 10.0
    exposure_target: float = 0.6
    exposure_patch: int = 16

    @classmethod
    def for_variant(cls, variant: str, **overrides: float) -> "LossWeights":
        """Defaults for a model variant: Zero-DCE++'s authors weight smoothness 1600."""
        base = cls(smoothness=1600.0) if variant == "fast" else cls()
        fields = asdict(base)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)


class ZeroDCELoss(torch.nn.Module):
    """The weighted sum of the four losses; also returns each weighted term for logging."""

    def __init__(self, weights: LossWeights = LossWeights()) -> None:
        super().__init__()
        self.weights = weights

    def forward(
        self, original: torch.Tensor, enhanced: torch.Tensor, curves: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.weights
        terms = {
            "smoothness": w.smoothness * illumination_smoothness_loss(curves),
            "spatial": w.spatial * spatial_consistency_loss(original, enhanced),
            "color": w.color * color_constancy_loss(enhanced),
            "exposure": w.exposure * exposure_control_loss(enhanced, w.exposure_patch, w.exposure_target),
        }
        total = terms["smoothness"] + terms["spatial"] + terms["color"] + terms["exposure"]
        return total, terms
