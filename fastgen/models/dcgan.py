"""DCGAN (Radford et al. 2016) sized for small images (8x8 digits, 28x28 MNIST, any H, W).

Generator: z (N, latent_dim) ~ N(0, I) -> linear -> (4w, ceil(H/4), ceil(W/4)) -> two stride-2
transposed convolutions with batch norm -> crop to (C, H, W) -> sigmoid: images in [0, 1].
Discriminator: two stride-2 convolutions with LeakyReLU(0.2) (no batch norm, so a real and a fake
batch can share one forward pass and D's output for an example does not depend on its batch) ->
linear -> one logit per image.
Training (train_step): D and G updated in turn each minibatch with the fused losses of
fastgen.nn.GANLoss(g_kind, discriminator_kind=d_kind):
  g_kind  the formulation, named by its generator loss ("minimax" | "nonsaturating" | "hinge")
  d_kind  the discriminator loss ("bce" | "hinge"; default: the formulation's)
"""
import torch
from torch import nn

from fastgen.models.base import ceil_div
from fastgen.nn.gan_loss import DISCRIMINATOR_KINDS as D_KINDS  # the kinds table of fastgen.reference.gan_loss
from fastgen.nn.gan_loss import KINDS, GANLoss

G_KINDS = tuple(KINDS)  # the GAN formulations, each named by its generator loss


class Generator(nn.Module):
    def __init__(self, input_shape, latent_dim, width):
        super().__init__()
        c, self.h, self.w = input_shape
        self.h4, self.w4 = ceil_div(self.h, 4), ceil_div(self.w, 4)   # two stride-2 layers
        self.width = width
        self.fc = nn.Sequential(nn.Linear(latent_dim, 4 * width * self.h4 * self.w4, bias=False),
                                nn.BatchNorm1d(4 * width * self.h4 * self.w4), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False),
                                nn.BatchNorm2d(2 * width), nn.ReLU(),
                                nn.ConvTranspose2d(2 * width, c, 4, 2, 1))

    def forward(self, z):
        """z (N, latent_dim) -> images (N, C, H, W) in [0, 1]."""
        y = self.up(self.fc(z).view(-1, 4 * self.width, self.h4, self.w4))
        return torch.sigmoid(y[:, :, :self.h, :self.w])


class Discriminator(nn.Module):
    def __init__(self, input_shape, width):
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(nn.Conv2d(c, width, 3, 2, 1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(width, 2 * width, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten())
        with torch.no_grad():
            n_features = self.body(torch.zeros(1, c, h, w)).shape[1]
        self.out = nn.Linear(n_features, 1)

    def features(self, x):
        """x (N, C, H, W) -> (N, F): the last hidden layer (DCGAN's feature-learning use)."""
        return self.body(2 * x - 1)  # [0, 1] -> [-1, 1]

    def forward(self, x):
        """x (N, C, H, W) in [0, 1] -> logits (N,)."""
        return self.out(self.features(x)).squeeze(-1)


class DCGAN(nn.Module):
    def __init__(self, input_shape=(1, 28, 28), latent_dim=32, width=32, g_kind="nonsaturating", d_kind=None):
        super().__init__()
        if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
                or not all(isinstance(s, int) and s > 0 for s in input_shape)):
            raise ValueError(f"input_shape must be (C, H, W) of positive ints; got {input_shape!r}")
        for name, v in (("latent_dim", latent_dim), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        if g_kind not in G_KINDS:
            raise ValueError(f"g_kind must be one of {', '.join(G_KINDS)}; got {g_kind!r}")
        if d_kind and d_kind not in D_KINDS:
            raise ValueError(f"d_kind must be one of {', '.join(D_KINDS)}; got {d_kind!r}")
        self.gan_loss = GANLoss(g_kind, discriminator_kind=d_kind or None)  # no parameters or buffers
        self.input_shape, self.latent_dim = tuple(input_shape), latent_dim
        self.g_kind, self.d_kind = g_kind, self.gan_loss.discriminator_kind
        self.generator = Generator(self.input_shape, latent_dim, width)
        self.discriminator = Discriminator(self.input_shape, width)

    def check_input(self, x, name="x"):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor (images in [0, 1])")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, self.input_shape))}); "
                             f"got {tuple(x.shape)}")
        return x

    def noise(self, n, generator=None):
        w = self.discriminator.out.weight
        return torch.randn((n, self.latent_dim), generator=generator, device=w.device, dtype=w.dtype)

    @torch.no_grad()
    def sample(self, n, *, generator=None):
        """n images (n, C, H, W) in [0, 1] (generator in eval mode: batch norm uses running stats)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int; got {n!r}")
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self.generator(self.noise(n, generator))
        finally:
            self.generator.train(was_training)

    def features(self, x):
        """Discriminator features (N, F) of images x (N, C, H, W) in [0, 1]."""
        return self.discriminator.features(self.check_input(x))

    def train_step(self, real, opt_d, opt_g, generator=None, g_net=None, d_net=None):
        """One D update then one G update on the minibatch `real` (N, C, H, W) in [0, 1].

        g_net / d_net: the modules to call (e.g. DistributedDataParallel wrappers of
        self.generator / self.discriminator); default the plain ones. Returns python floats."""
        g_net = self.generator if g_net is None else g_net   # (not `or`: a module may define len)
        d_net = self.discriminator if d_net is None else d_net
        real = self.check_input(real, "real")
        n = real.shape[0]
        # D step: real and fake in one forward (one DDP forward per backward).
        with torch.no_grad():
            fake = g_net(self.noise(n, generator))
        logits = d_net(torch.cat([real, fake]))
        d_loss = self.gan_loss.discriminator(logits[:n], logits[n:])
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # G step: gradients also reach D's parameters; they are cleared before D's next step.
        g_loss = self.gan_loss.generator(d_net(g_net(self.noise(n, generator))))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}
