"""Issue 11 item 7: the VAE's encoder sees inputs in [0, 1] for every decoder, as the other
models do (a categorical decoder's raw levels 0..K-1 made the first layer blow up)."""
import pytest
import torch

from fastgen.models.vae import VAE


@pytest.mark.parametrize("decoder, levels", [("categorical", 4), ("categorical", 256), ("bernoulli", 2),
                                             ("gaussian", None)])
def test_encoder_input_is_scaled_to_unit_range(decoder, levels):
    torch.manual_seed(0)
    model = VAE((1, 3, 3), latent_dim=2, hidden=8, decoder=decoder, num_levels=levels)
    if decoder == "gaussian":
        x = torch.rand(5, 1, 3, 3)
        want = x
    else:
        top = model.num_levels - 1
        x = torch.randint(0, top + 1, (5, 1, 3, 3)).float()
        x[0, 0, 0, 0] = top
        want = x / top
    seen = []
    model.encoder.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    model.elbo(x)
    model.iwae(x, k=2)
    model.encode(x)
    assert len(seen) == 3
    for s in seen:
        torch.testing.assert_close(s, want, rtol=0, atol=0)
        assert 0 <= s.min() and s.max() <= 1
