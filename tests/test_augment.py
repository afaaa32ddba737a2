import torch

from gsrcl.model.augment import gaussian_noise, gene_masking


def test_gaussian_noise_has_the_configured_spread_and_is_seeded():
    x = torch.full((2000, 50), 3.0)
    a = gaussian_noise(x, 0.5, torch.Generator().manual_seed(1))
    b = gaussian_noise(x, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    noise = a - x
    assert abs(noise.mean().item()) < 0.01
    assert abs(noise.std().item() - 0.5) < 0.01


def test_two_views_from_one_generator_differ():
    x = torch.zeros(10, 5)
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(gaussian_noise(x, 1.0, g), gaussian_noise(x, 1.0, g))


def test_gene_masking_drops_a_fraction_p_and_rescales_survivors_like_dropout():
    x = torch.ones(1000, 200)
    out = gene_masking(x, 0.9, torch.Generator().manual_seed(0))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.01
    assert torch.allclose(out[kept], torch.tensor(10.0))
    # expected value preserved, as with torch.nn.Dropout
    assert abs(out.mean().item() - 1.0) < 0.05
