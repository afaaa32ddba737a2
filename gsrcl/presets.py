"""The paper's protocol (Alsaggaf, Buchan & Wan 2024) as settings, for configs to start from.

The numbers live once, as the defaults of `gsrcl.settings`; this module names the paper's choice of
methods (Gaussian noise with both losses; random masking at four gene counts with its two encoder
sizes) and bundles everything so a config can write `contrastive=PAPER.contrastive`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gsrcl.settings import Contrastive, Evaluation, Method, Split

SMALL_MASKING_ENCODER = (384, 256, 128, 64)  # masking with 500 or 1000 genes
LARGE_MASKING_ENCODER = (2048, 1024, 512, 128)  # masking with 3000 or 5000 genes


def masking(n_genes: int, loss: str = "simclr") -> Method:
    """The contrastive-sc comparison at the paper's encoder size for that gene count."""
    encoder = SMALL_MASKING_ENCODER if n_genes <= 1000 else LARGE_MASKING_ENCODER
    return Method(loss=loss, augmentation="masking", n_genes=n_genes, encoder=encoder)


@dataclass(frozen=True)
class Protocol:
    contrastive: Contrastive = field(default_factory=Contrastive)
    split: Split = field(default_factory=Split)
    evaluation: Evaluation = field(default_factory=Evaluation)
    methods: tuple[Method, ...] = (
        Method(loss="simclr", augmentation="noise"),
        Method(loss="supcon", augmentation="noise"),
        *(masking(n) for n in (500, 1000, 3000, 5000)),
    )


PAPER = Protocol()
