"""The encoder file: weights, layer sizes, genes, preprocessing; loads with weights_only=True."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from gsrcl.config.settings import Method
from gsrcl.data.preprocess import Fitted
from gsrcl.model.encoder import build_encoder


def encoder_record(
    state: dict,
    kwargs: dict,
    genes: list[str],
    fitted: Fitted,
    method: Method,
    epoch: int,
) -> dict:
    """What an encoder file holds (saved with torch.save, loaded with weights_only=True)."""
    return {
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
        "epoch": epoch,  # its validation score per task is in the job's metrics.json
    }


def load_encoder(path: Path) -> tuple[torch.nn.Module, dict]:
    """The encoder (eval mode, CPU) and the whole checkpoint; loading never runs stored code."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    encoder = build_encoder(**checkpoint["kwargs"])
    encoder.load_state_dict(checkpoint["state_dict"])
    return encoder.eval(), checkpoint


def logged_expression(checkpoint: dict, adata: ad.AnnData) -> np.ndarray:
    """All genes of `adata` normalised and logged as the encoder's input was (before its gene
    selection and scaling); encoders with the same `preprocessing_key` share it."""
    saved = checkpoint["preprocess"]
    return Fitted(values=saved["values"], target_sum=saved["target_sum"]).transform(adata)


def preprocessing_key(checkpoint: dict) -> tuple:
    return checkpoint["preprocess"]["values"], checkpoint["preprocess"]["target_sum"]


def encoder_input(
    checkpoint: dict, adata: ad.AnnData, logged: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """The cells of `adata` prepared as the encoder's training cells were, and how many of the
    encoder's genes the data lacks (filled with zeros, as an unexpressed gene would be).
    `logged`: `logged_expression` of these cells, when already computed for another encoder."""
    saved = checkpoint["preprocess"]
    index = adata.var_names.get_indexer(checkpoint["genes"])
    present = index >= 0
    if logged is None:
        logged = logged_expression(checkpoint, adata)
    x = np.zeros((adata.n_obs, len(index)), dtype=np.float32)
    x[:, present] = logged[:, index[present]]
    if saved["mean"] is not None:
        x = (x - saved["mean"].numpy()) / saved["std"].numpy()
    return x, int((~present).sum())
