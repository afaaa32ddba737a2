"""The encoder file: weights, layer sizes, genes, preprocessing; loads with weights_only=True."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from gsrcl.encoder import build_encoder
from gsrcl.preprocess import Fitted
from gsrcl.settings import Method


def save_encoder(
    path: Path,
    state: dict,
    kwargs: dict,
    genes: list[str],
    fitted: Fitted,
    method: Method,
    epoch: int,
    score: float,
) -> None:
    torch.save(
        {
            "state_dict": state,
            "kwargs": kwargs,
            "genes": genes,
            "method": asdict(method),
            "preprocess": {
                "values": fitted.values,
                "target_sum": fitted.target_sum,
                "mean": None if fitted.mean is None else torch.from_numpy(fitted.mean),
                "std": None if fitted.std is None else torch.from_numpy(fitted.std),
            },
            "epoch": epoch,
            "validation_score": score,
        },
        path,
    )


def load_encoder(path: Path) -> tuple[torch.nn.Module, dict]:
    """The encoder (eval mode, CPU) and the whole checkpoint; loading never runs stored code."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    encoder = build_encoder(**checkpoint["kwargs"])
    encoder.load_state_dict(checkpoint["state_dict"])
    return encoder.eval(), checkpoint


def encoder_input(checkpoint: dict, adata: ad.AnnData) -> np.ndarray:
    """The cells of `adata` prepared exactly as the encoder's training cells were."""
    saved = checkpoint["preprocess"]
    genes = adata.var_names.get_indexer(checkpoint["genes"])
    if (genes < 0).any():
        missing = int((genes < 0).sum())
        raise ValueError(f"{missing} of the encoder's {len(genes)} genes are not in the data")
    fitted = Fitted(
        values=saved["values"],
        target_sum=saved["target_sum"],
        genes=genes,
        mean=None if saved["mean"] is None else saved["mean"].numpy(),
        std=None if saved["std"] is None else saved["std"].numpy(),
    )
    return fitted.transform(adata)
