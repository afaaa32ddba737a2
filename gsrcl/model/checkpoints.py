"""The encoder file: weights, layer sizes, the genes it reads and their preprocessing.

`EncoderFile` is the one reader and writer of the format; it round-trips through a plain record
of tensors and Python values (`to_record` / `from_record`), so `torch.load(path,
weights_only=True)` loads it without running stored code. `EncoderInput` is how an encoder reads
cells, usable on its own (the out-of-reference check reads cells the same way).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from gsrcl.config.settings import Method
from gsrcl.data.preprocess import Fitted
from gsrcl.model.encoder import build_encoder


@dataclass(frozen=True)
class EncoderInput:
    """The genes an encoder reads (by name) and the preprocessing fitted on its training cells:
    per-cell normalisation and log of all genes, then (masking) scaling of the chosen ones."""

    genes: list[str]
    values: str  # "counts" or "log"
    target_sum: float | None  # per-cell normalisation target; None = none
    mean: np.ndarray | None = None  # scaling of `genes`; None = none
    std: np.ndarray | None = None

    @property
    def key(self) -> tuple:
        """Inputs with the same key share `logged` (the normalise-and-log of all genes)."""
        return self.values, self.target_sum

    def logged(self, adata: ad.AnnData) -> np.ndarray:
        """All genes of `adata` normalised and logged as the training cells were."""
        return Fitted(values=self.values, target_sum=self.target_sum).transform(adata)

    def prepare(
        self, adata: ad.AnnData, logged: np.ndarray | None = None
    ) -> tuple[np.ndarray, int]:
        """The cells as the encoder's training cells were prepared, and how many of its genes
        `adata` lacks (filled with zeros, as an unexpressed gene would be). `logged`: this
        input's `logged(adata)`, when already computed for another encoder."""
        index = adata.var_names.get_indexer(self.genes)
        present = index >= 0
        if logged is None:
            logged = self.logged(adata)
        x = np.zeros((adata.n_obs, len(index)), dtype=np.float32)
        x[:, present] = logged[:, index[present]]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, int((~present).sum())

    def to_record(self) -> dict[str, Any]:
        tensor = lambda a: None if a is None else torch.from_numpy(np.asarray(a))  # noqa: E731
        return {
            "values": self.values,
            "target_sum": self.target_sum,
            "mean": tensor(self.mean),
            "std": tensor(self.std),
        }

    @classmethod
    def from_record(cls, genes: list[str], record: dict[str, Any]) -> EncoderInput:
        array = lambda t: None if t is None else t.numpy()  # noqa: E731
        return cls(
            genes=list(genes),
            values=record["values"],
            target_sum=record["target_sum"],
            mean=array(record["mean"]),
            std=array(record["std"]),
        )


@dataclass
class EncoderFile:
    """What an encoder file holds."""

    state_dict: dict[str, torch.Tensor]
    kwargs: dict[str, Any]  # `build_encoder`'s arguments: the layer sizes
    input: EncoderInput
    method: dict[str, Any]
    epoch: int  # its validation score per task is in the job's metrics.json

    @classmethod
    def of(
        cls, state: dict, kwargs: dict, genes: list[str], fitted: Fitted, method: Method, epoch: int
    ) -> EncoderFile:
        """A chosen snapshot of a training, with the preprocessing fitted for it."""
        encoder_input = EncoderInput(
            genes, fitted.values, fitted.target_sum, fitted.mean, fitted.std
        )
        return cls(state, kwargs, encoder_input, asdict(method), epoch)

    def to_record(self, precision: str = "float32") -> dict[str, Any]:
        """`precision` "float16" stores the weights at half the size; `build` loads them back
        into the float32 network."""
        return {
            "state_dict": stored(self.state_dict, precision),
            "kwargs": self.kwargs,
            "genes": self.input.genes,
            "method": self.method,
            "preprocess": self.input.to_record(),
            "epoch": self.epoch,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EncoderFile:
        encoder_input = EncoderInput.from_record(record["genes"], record["preprocess"])
        return cls(
            record["state_dict"], record["kwargs"], encoder_input, record["method"], record["epoch"]
        )

    @classmethod
    def load(cls, path: Path) -> EncoderFile:
        """Loading never runs stored code (weights_only)."""
        return cls.from_record(torch.load(path, map_location="cpu", weights_only=True))

    def build(self) -> torch.nn.Module:
        """The encoder network with these weights, in eval mode on the CPU."""
        encoder = build_encoder(**self.kwargs)
        encoder.load_state_dict(self.state_dict)
        return encoder.eval()


def stored(state: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """The weights as stored: float16 where asked and the values fit its range (a tensor that
    does not fit stays float32); integer tensors (batch counts) unchanged."""
    if precision == "float32":
        return state
    half = torch.finfo(torch.float16).max
    return {
        name: t.half() if t.is_floating_point() and t.numel() and t.abs().max() <= half else t
        for name, t in state.items()
    }


def load_encoder(path: Path) -> tuple[torch.nn.Module, EncoderFile]:
    """The encoder (eval mode, CPU) and its file's contents."""
    saved = EncoderFile.load(path)
    return saved.build(), saved
