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


def test_two_views_in_a_reused_buffer_equal_the_plain_formulas_bit_for_bit():
    """The in-place views draw the same numbers as `x + sigma * randn` and `x * (rand >= p) /
    (1 - p)`, view after view, whatever the buffer held before."""
    from gsrcl.model.augment import two_views

    x = torch.rand(30, 40) * (torch.rand(30, 40) < 0.3)
    plain, in_place = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    buffer = torch.full((60, 40), 7.0)
    noise = two_views(lambda v, out: gaussian_noise(v, 0.5, in_place, out), x, buffer)
    assert noise is buffer
    views = [x + 0.5 * torch.randn(x.shape, generator=plain) for _ in range(2)]
    assert torch.equal(noise, torch.cat(views))
    masked = two_views(lambda v, out: gene_masking(v, 0.4, in_place, out), x, buffer)
    views = [x * (torch.rand(x.shape, generator=plain) >= 0.4) / 0.6 for _ in range(2)]
    assert torch.equal(masked, torch.cat(views))
