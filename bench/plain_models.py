"""The plain-PyTorch way of writing each benchmarked architecture: what most public code does.

nn.Linear / nn.Conv2d layers whose weight is multiplied by a fixed 0/1 mask inside forward
(never mutated in place), recurrences as Python loops over rows / columns / pixels, losses from
F.binary_cross_entropy_with_logits. Binary pixels, one channel (the MNIST recipes).

`plain_from(name, model)` builds the plain twin of a fastgen model and copies its weights, so
bench_models.py can check that both compute the same log-likelihood (to rounding) before it
times them: the correctness anchor of the model benchmarks. The masks are written here from
the papers' definitions (not imported from fastgen), except MADE's, whose random hidden degrees
are the model's own draw and are copied from it.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn


def bernoulli_log_prob(logits, x):
    """Sum over pixels of log p(x | logits) for binary x: (N, ...) -> (N,)."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def causal_mask(out_channels, in_channels, kh, kw, mask_type):
    """PixelCNN mask for one colour channel: rows above, pixels left in the centre row, and the
    centre itself for type "B"."""
    m = torch.zeros(out_channels, in_channels, kh, kw)
    m[:, :, : kh // 2] = 1
    m[:, :, kh // 2, : kw // 2 + (mask_type == "B")] = 1
    return m


class MaskedLinear(nn.Linear):
    def __init__(self, in_features, out_features, mask):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedConv2d(nn.Conv2d):
    """Same-size conv on weight * mask; a mask of all ones (1x1 type B) is skipped, as a user
    writing it by hand would use a plain nn.Conv2d there."""

    def __init__(self, cin, cout, k, mask_type, bias=True):
        k = (k, k) if isinstance(k, int) else k
        super().__init__(cin, cout, k, padding=(k[0] // 2, k[1] // 2), bias=bias)
        mask = causal_mask(cout, cin, k[0], k[1], mask_type)
        self.register_buffer("mask", None if bool(mask.all()) else mask)

    def forward(self, x):
        w = self.weight if self.mask is None else self.weight * self.mask
        return F.conv2d(x, w, self.bias, padding=self.padding)


class PlainFVSBN(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.linear = MaskedLinear(d, d, torch.ones(d, d).tril(-1))

    def log_prob(self, x):
        return bernoulli_log_prob(self.linear(x.flatten(1)), x.flatten(1))


class PlainMADE(nn.Module):
    def __init__(self, masks):
        super().__init__()
        self.layers = nn.ModuleList(MaskedLinear(m.shape[1], m.shape[0], m) for m in masks)

    def log_prob(self, x):
        h = x.flatten(1)
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        return bernoulli_log_prob(self.layers[-1](h), x.flatten(1))


class PlainNADE(nn.Module):
    """The loop over pixels of the NADE paper's algorithm 1 (natural order)."""

    def __init__(self, d, h):
        super().__init__()
        self.W, self.c = nn.Parameter(torch.zeros(h, d)), nn.Parameter(torch.zeros(h))
        self.V, self.b = nn.Parameter(torch.zeros(d, h)), nn.Parameter(torch.zeros(d))

    def log_prob(self, x):
        v = x.flatten(1)
        a = self.c.expand(v.shape[0], -1)
        logits = []
        for d in range(v.shape[1]):
            logits.append(torch.sigmoid(a) @ self.V[d] + self.b[d])
            a = a + v[:, d:d + 1] * self.W[:, d]
        return bernoulli_log_prob(torch.stack(logits, 1), v)


class PlainPixelCNN(nn.Module):
    def __init__(self, hidden, num_layers, k_in=7, k_block=3):
        super().__init__()
        mid = hidden // 2
        self.conv_in = MaskedConv2d(1, hidden, k_in, "A")
        self.blocks = nn.ModuleList(nn.ModuleList([MaskedConv2d(hidden, mid, 1, "B"),
                                                   MaskedConv2d(mid, mid, k_block, "B"),
                                                   MaskedConv2d(mid, hidden, 1, "B")])
                                    for _ in range(num_layers - 1))
        self.head1, self.head2 = MaskedConv2d(hidden, hidden, 1, "B"), MaskedConv2d(hidden, 1, 1, "B")

    def log_prob(self, x):
        s = self.conv_in(2 * x - 1)
        for reduce, conv, expand in self.blocks:
            s = s + expand(F.relu(conv(F.relu(reduce(F.relu(s))))))
        return bernoulli_log_prob(self.head2(F.relu(self.head1(F.relu(s)))), x)


def lstm_cell(z, c):
    i, f, g, o = z.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class PlainRowLSTM(nn.Module):
    def __init__(self, hidden, k=3):
        super().__init__()
        self.input_to_state = MaskedConv2d(hidden, 4 * hidden, (1, k), "B", bias=False)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 3, padding=1)

    def forward(self, x):
        gates = self.input_to_state(x)
        n, four_h, rows, w = gates.shape
        h = c = gates.new_zeros(n, four_h // 4, w)
        out = []
        for r in range(rows):
            h, c = lstm_cell(gates[:, :, r] + self.state_to_state(h), c)
            out.append(h)
        return torch.stack(out, 2)


class PlainDiagonalLSTM(nn.Module):
    """Skew, then a loop over the columns of the skewed map; the state reads the previous
    column's rows r-1 (above) and r (left): a kernel-2 conv1d along the column."""

    def __init__(self, hidden):
        super().__init__()
        self.input_to_state = MaskedConv2d(hidden, 4 * hidden, 1, "B", bias=False)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2, padding=1)

    def forward(self, x):
        n, _, rows, w = x.shape
        g = self.input_to_state(x)
        skewed = g.new_zeros(n, g.shape[1], rows, w + rows - 1)
        for r in range(rows):
            skewed[:, :, r, r:r + w] = g[:, :, r]
        h = c = g.new_zeros(n, g.shape[1] // 4, rows)
        cols = []
        for j in range(skewed.shape[3]):
            h, c = lstm_cell(skewed[:, :, :, j] + self.state_to_state(h)[:, :, :rows], c)
            cols.append(h)
        out = torch.stack(cols, 3)
        return torch.stack([out[:, :, r, r:r + w] for r in range(rows)], 2)


class PlainDiagonalBiLSTM(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.forward_dir, self.backward_dir = PlainDiagonalLSTM(hidden), PlainDiagonalLSTM(hidden)

    def forward(self, x):
        right = self.backward_dir(x.flip(3)).flip(3)
        return self.forward_dir(x) + F.pad(right, (0, 0, 1, 0))[:, :, : x.shape[2]]


class PlainPixelRNN(nn.Module):
    def __init__(self, kind, hidden, num_layers):
        super().__init__()
        self.input_conv = MaskedConv2d(1, hidden, 7, "A")
        make = (lambda: PlainRowLSTM(hidden)) if kind == "row" else (lambda: PlainDiagonalBiLSTM(hidden))
        self.lstms = nn.ModuleList(make() for _ in range(num_layers))
        self.residuals = nn.ModuleList(MaskedConv2d(hidden, hidden, 1, "B") for _ in range(num_layers))
        self.head1, self.head2 = MaskedConv2d(hidden, hidden, 1, "B"), MaskedConv2d(hidden, 1, 1, "B")

    def log_prob(self, x):
        feat = self.input_conv(x)
        for lstm, res in zip(self.lstms, self.residuals):
            feat = feat + res(lstm(feat))
        return bernoulli_log_prob(self.head2(F.relu(self.head1(F.relu(feat)))), x)


class PlainVAE(nn.Module):
    """MLP encoder / decoder, z = mu + exp(logvar / 2) eps, analytic KL."""

    def __init__(self, d, hidden, latent):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, d))

    def elbo(self, x, generator=None):
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, -1)
        eps = torch.randn(mu.shape, generator=generator)
        z = mu + torch.exp(0.5 * logvar) * eps
        kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(-1)
        return bernoulli_log_prob(self.decoder(z), x.flatten(1)) - kl

    def loss(self, x, generator=None):
        return -self.elbo(x, generator).mean()

    def log_prob(self, x, k=64):
        """The IWAE bound with k samples (the fastgen VAE's test-set estimate)."""
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, -1)
        eps = torch.randn((k,) + mu.shape)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_pz = -0.5 * (z * z).sum(-1)
        log_qz = -0.5 * (eps * eps + logvar).sum(-1)
        logits = self.decoder(z)
        log_w = bernoulli_log_prob(logits.flatten(0, 1), x.flatten(1).repeat(k, 1)).view(k, -1) + log_pz - log_qz
        return torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(k)))


class PlainDCGAN(nn.Module):
    """The same generator and discriminator modules (they hold none of fastgen's ops), trained
    with F.binary_cross_entropy_with_logits losses."""

    def __init__(self, model):
        super().__init__()
        self.generator = copy.deepcopy(model.generator)
        self.discriminator = copy.deepcopy(model.discriminator)
        self.latent_dim = model.latent_dim

    @staticmethod
    def d_loss(real_logits, fake_logits):
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))

    @staticmethod
    def g_loss(fake_logits):
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def train_step(self, real, opt_d, opt_g):
        n = real.shape[0]
        with torch.no_grad():
            fake = self.generator(torch.randn(n, self.latent_dim))
        logits = self.discriminator(torch.cat([real, fake]))
        d_loss = self.d_loss(logits[:n], logits[n:])
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = self.g_loss(self.discriminator(self.generator(torch.randn(n, self.latent_dim))))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()


# --- building the twin of a fastgen model, weights copied ---------------------------------------
def _copy(dst, src):
    with torch.no_grad():
        dst.copy_(src.reshape(dst.shape))


def _copy_conv(dst, src):
    _copy(dst.weight, src.weight)
    if dst.bias is not None:
        _copy(dst.bias, src.bias)


def plain_from(name, model):
    """The plain twin of the fastgen model `model` built from recipe `name`, same weights."""
    c, h, w = model.input_shape
    d = c * h * w
    if name == "fvsbn":
        p = PlainFVSBN(d)
        _copy_conv(p.linear, model.linear)
    elif name.startswith("made"):
        layers = list(model.hidden) + [model.output]
        p = PlainMADE([layer.mask for layer in layers])
        for dst, src in zip(p.layers, layers):
            _copy_conv(dst, src)
    elif name == "nade":
        p = PlainNADE(d, model.hidden_size)
        for n_ in ("W", "c", "V", "b"):
            _copy(getattr(p, n_), getattr(model, n_))
    elif name == "pixelcnn":
        p = PlainPixelCNN(model.conv_in.out_channels, len(model.blocks) + 1, model.conv_in.kernel_size[0],
                          model.blocks[0].conv.kernel_size[0] if len(model.blocks) else 3)
        _copy_conv(p.conv_in, model.conv_in)
        for (r, cv, e), blk in zip(p.blocks, model.blocks):
            _copy_conv(r, blk.reduce), _copy_conv(cv, blk.conv), _copy_conv(e, blk.expand)
        _copy_conv(p.head1, model.head.conv1), _copy_conv(p.head2, model.head.conv2)
    elif name.startswith("pixelrnn"):
        # one colour channel: fastgen's gate conv stores its rows colour-major (C, 4, h/C), which
        # for C = 1 is the plain gate-major (i, f, g, o) layout copied here as is
        if c != 1:
            raise ValueError(f"the plain PixelRNN twin has one colour channel; got C={c}")
        hidden = model.input_conv.out_channels
        p = PlainPixelRNN(model.kind, hidden, len(model.lstms))
        _copy_conv(p.input_conv, model.input_conv)
        for dst, src in zip(p.lstms, model.lstms):
            pairs = [(dst, src)] if model.kind == "row" else [(dst.forward_dir, src.forward_dir),
                                                              (dst.backward_dir, src.backward_dir)]
            for pd, ps in pairs:
                _copy_conv(pd.input_to_state, ps.input_to_state)
                _copy(pd.state_to_state.weight, ps.weight_ss)
                _copy(pd.state_to_state.bias, ps.bias)
        for dst, src in zip(p.residuals, model.residuals):
            _copy_conv(dst, src)
        _copy_conv(p.head1, model.head.conv1), _copy_conv(p.head2, model.head.conv2)
    elif name == "vae":
        p = PlainVAE(d, model.hidden, model.latent_dim)
        enc = [m for m in model.encoder if isinstance(m, nn.Linear)] + [model.head.proj]
        dec = [m for m in model.decoder_net if isinstance(m, nn.Linear)]
        for dst, src in zip([m for m in p.encoder if isinstance(m, nn.Linear)], enc):
            _copy_conv(dst, src)
        for dst, src in zip([m for m in p.decoder if isinstance(m, nn.Linear)], dec):
            _copy_conv(dst, src)
    elif name == "dcgan":
        p = PlainDCGAN(model)
    else:
        raise ValueError(f"no plain twin for {name!r}")
    return p
