import math

import numpy as np
import torch

from gsrcl.model.losses import nt_xent, supcon


def _cosine_logits(z1, z2, t):
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return z @ z.T / t


def _reference_loss(z1, z2, t, positives):
    """Loop over anchors: mean over positives of -log(exp(s_ap) / sum_{k≠a} exp(s_ak))."""
    sim = _cosine_logits(z1, z2, t)
    n2 = len(sim)
    total = 0.0
    for a in range(n2):
        denominator = sum(math.exp(sim[a, k]) for k in range(n2) if k != a)
        pos = positives(a)
        total += -sum(math.log(math.exp(sim[a, p]) / denominator) for p in pos) / len(pos)
    return total / n2


def test_nt_xent_matches_hand_computed_value():
    # views v0=(1,0), v1=(0,1) of cells 0, 1 and v2=(c,c), v3=(-c,c) after normalisation
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    t, c = 0.5, 1 / math.sqrt(2)
    e = math.exp(c / t)
    # cosines: v0·(v1,v2,v3)=(0,c,-c); v1·(v0,v2,v3)=(0,c,c); v2·(v0,v1,v3)=(c,c,0); v3·=(−c,c,0)
    by_anchor = [
        -math.log(e / (1 + e + 1 / e)),  # v0, positive v2
        -math.log(e / (1 + 2 * e)),  # v1, positive v3
        -math.log(e / (2 * e + 1)),  # v2, positive v0
        -math.log(e / (1 / e + e + 1)),  # v3, positive v1
    ]
    assert math.isclose(nt_xent(z1, z2, t).item(), sum(by_anchor) / 4, rel_tol=1e-12)


def test_nt_xent_random_matches_reference():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    expected = _reference_loss(z1, z2, 0.07, lambda a: [(a + 5) % 10])
    assert math.isclose(
        nt_xent(torch.tensor(z1), torch.tensor(z2), 0.07).item(), expected, rel_tol=1e-9
    )


def test_supcon_matches_reference_and_uses_labels():
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    labels = np.array([0, 1, 0, 1, 1, 0])
    both = np.concatenate([labels, labels])
    expected = _reference_loss(
        z1, z2, 0.1, lambda a: [p for p in range(12) if p != a and both[p] == both[a]]
    )
    loss = supcon(torch.tensor(z1), torch.tensor(z2), torch.tensor(labels), 0.1).item()
    assert math.isclose(loss, expected, rel_tol=1e-9)


def test_supcon_with_distinct_labels_is_nt_xent():
    rng = np.random.default_rng(2)
    z1, z2 = torch.tensor(rng.normal(size=(7, 3))), torch.tensor(rng.normal(size=(7, 3)))
    distinct = torch.arange(7)
    assert torch.isclose(supcon(z1, z2, distinct, 0.2), nt_xent(z1, z2, 0.2))


def test_loss_falls_when_views_agree():
    rng = np.random.default_rng(3)
    z = torch.tensor(rng.normal(size=(8, 4)))
    other = torch.tensor(rng.normal(size=(8, 4)))
    assert nt_xent(z, z, 0.5) < nt_xent(z, other, 0.5)


def test_blockwise_losses_equal_the_whole_matrix(monkeypatch):
    """Past FULL_MATRIX_VIEWS the losses are made in blocks of rows: same value and gradient."""
    from gsrcl.model import losses

    generator = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(37, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    labels = torch.randint(0, 3, (37,), generator=generator)

    def value_and_gradient(loss):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        value = loss(a, b)
        value.backward()
        return value.item(), torch.cat([a.grad, b.grad])

    for loss in (lambda a, b: nt_xent(a, b, 0.1), lambda a, b: supcon(a, b, labels, 0.1)):
        whole = value_and_gradient(loss)
        monkeypatch.setattr(losses, "FULL_MATRIX_VIEWS", 10)
        monkeypatch.setattr(losses, "BLOCK_ROWS", 16)  # 74 views: blocks of 16, 16, 16, 16, 10
        blocks = value_and_gradient(loss)
        monkeypatch.undo()
        assert math.isclose(blocks[0], whole[0], rel_tol=1e-12)
        assert torch.allclose(blocks[1], whole[1], rtol=1e-10, atol=1e-13)


def test_blockwise_loss_under_bf16_autocast(monkeypatch):
    """The training step's bf16 autocast (CPU here, CUDA on a GPU) leaves the blocks in float32."""
    from gsrcl.model import losses

    monkeypatch.setattr(losses, "FULL_MATRIX_VIEWS", 10)
    monkeypatch.setattr(losses, "BLOCK_ROWS", 8)
    z1, z2 = (torch.randn(20, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = nt_xent(a @ torch.eye(4), b @ torch.eye(4), 0.1)
    value.backward()
    expected = nt_xent(z1.double(), z2.double(), 0.1).item()
    assert abs(value.item() - expected) < 0.05 and torch.isfinite(a.grad).all()
