"""Fast PixelRNN samplers: advance the recurrent state pixel by pixel instead of re-running the
network for every dimension. They draw from the same uniforms as the naive sampler
(AutoregressiveModel._sample_naive) in the same order, so they return its samples.

Row kind: at the start of row r each layer's state-to-state term conv1d(h_{r-1}, weight_ss) is
computed once for the whole row; pixel (r, w) then needs only its input-to-state window (the
features at (r, w - k//2 .. w)), the gating, the residual and the head.
Diagonal kind: the left-to-right state at (r, c) reads (r - 1, c) and (r, c - 1); the
right-to-left states of row r - 1 are computed for the whole row at the end of that row. The
skewed map's left padding carries a data-independent state into column 0 (the LSTM driven by
its bias alone, one step per row); it is reproduced here exactly.
"""
import torch
import torch.nn.functional as F

from fastgen.models.base import inverse_cdf, tap_matrix


def _cell(z, c_prev):
    """LSTM gating: z (n, 4h) pre-activations (i, f, g, o), c_prev (n, h) -> (h, c)."""
    zi, zf, zg, zo = z.chunk(4, dim=1)
    c = torch.sigmoid(zf) * c_prev + torch.sigmoid(zi) * torch.tanh(zg)
    return torch.sigmoid(zo) * torch.tanh(c), c


def _mat(conv):
    """A 1x1 masked conv as (weight^T (in, out), bias)."""
    return tap_matrix(conv.masked_weight()), conv.bias


class _Pixel:
    """Shared pieces: the padded scaled image, the input conv at one pixel, the head, drawing."""

    def __init__(self, model, x, known, u):
        self.model, self.x, self.known, self.u = model, x, known, u
        n, C, H, W = x.shape
        self.C, self.W = C, W
        self.xp = F.pad(model.scale(x), (3, 3, 3, 0))  # rows r-3..r, cols w-3..w+3 at [r:r+4, w:w+7]
        self.in_w = tap_matrix(model.input_conv.masked_weight(), rows=4)
        self.in_b = model.input_conv.bias
        self.head = model.head.matrices()

    def input_feature(self, r, w):
        patch = self.xp[:, :, r: r + 4, w: w + 7].reshape(self.x.shape[0], -1)
        return torch.addmm(self.in_b, patch, self.in_w)

    def draw(self, feat, r, w, ch):
        """Logits of channel ch at (r, w) from the last features; writes the drawn level."""
        known = self.known[:, ch, r, w]
        if bool(known.all()):
            return
        logits = self.model.head.at_position(feat, self.head)[:, :, ch]
        step = (r * self.W + w) * self.C + ch
        level = torch.where(known, self.x[:, ch, r, w], inverse_cdf(logits, self.u[:, step]))
        self.x[:, ch, r, w] = level
        self.xp[:, ch, r + 3, w + 3] = level.to(self.xp.dtype) / (self.model.num_levels - 1)


def sample_row(model, x, known, u):
    """Fast sampler of a kind="row" PixelRNN: x, known (n, C, H, W), u (n, D); fills x."""
    px = _Pixel(model, x, known, u)
    n, C, H, W = x.shape
    dt = px.xp.dtype
    layers = []
    for lstm, res in zip(model.lstms, model.residuals):
        k = lstm.input_to_state.kernel_size[1]
        half = k // 2
        w_in = tap_matrix(lstm.input_to_state.gate_weight(), cols=half + 1)  # left taps and centre
        hdim = lstm.hidden_channels
        layers.append(dict(
            half=half, w_in=w_in, w_ss=lstm.weight_ss, b_ss=lstm.bias,
            res=_mat(res), h_prev=x.new_zeros(n, hdim, W, dtype=dt), c_prev=x.new_zeros(n, hdim, W, dtype=dt),
            h_cur=x.new_zeros(n, hdim, W, dtype=dt), c_cur=x.new_zeros(n, hdim, W, dtype=dt),
            # this layer's input, left-padded
            row=x.new_zeros(n, lstm.input_to_state.in_channels, W + half, dtype=dt)))
    for r in range(H):
        for L in layers:
            L["ss"] = F.conv1d(L["h_prev"], L["w_ss"], L["b_ss"], padding=1)  # (n, 4h, W)
        for w in range(W):
            for ch in range(C):
                feat = px.input_feature(r, w)
                for L in layers:
                    half = L["half"]
                    L["row"][:, :, w + half] = feat
                    window = L["row"][:, :, w: w + half + 1].reshape(n, -1)
                    z = torch.addmm(L["ss"][:, :, w], window, L["w_in"])
                    hv, cv = _cell(z, L["c_prev"][:, :, w])
                    L["h_cur"][:, :, w], L["c_cur"][:, :, w] = hv, cv
                    feat = feat + torch.addmm(L["res"][1], hv, L["res"][0])
                px.draw(feat, r, w, ch)
        for L in layers:
            L["h_prev"], L["h_cur"] = L["h_cur"], L["h_prev"]
            L["c_prev"], L["c_cur"] = L["c_cur"], L["c_prev"]
    return x


def _direction(lstm, n, H, dt, device):
    """One diagonal direction's weights and its padding states s_0..s_{H-1} ((h,), (h,))."""
    w_in = tap_matrix(lstm.input_to_state.gate_weight())
    w_above, w_left = lstm.weight_ss[:, :, 0].t(), lstm.weight_ss[:, :, 1].t()
    hdim = lstm.hidden_channels
    h = torch.zeros(1, hdim, dtype=dt, device=device)
    c = torch.zeros_like(h)
    pads = []
    for _ in range(H):  # the padding column's state after r steps of the bias-only recurrence
        pads.append((h.expand(n, hdim), c.expand(n, hdim)))
        h, c = _cell(lstm.bias + h @ w_above + h @ w_left, c)
    return dict(w_in=w_in, w_above=w_above, w_left=w_left, b=lstm.bias, pads=pads)


def sample_diagonal(model, x, known, u):
    """Fast sampler of a kind="diagonal" PixelRNN: x, known (n, C, H, W), u (n, D); fills x."""
    px = _Pixel(model, x, known, u)
    n, C, H, W = x.shape
    dt, dev = px.xp.dtype, x.device
    layers = []
    for bilstm, res in zip(model.lstms, model.residuals):
        hdim = bilstm.hidden_channels
        zeros = lambda *s: torch.zeros(*s, dtype=dt, device=dev)  # noqa: E731
        layers.append(dict(
            left=_direction(bilstm.forward_dir, n, H, dt, dev),
            right=_direction(bilstm.backward_dir, n, H, dt, dev), res=_mat(res),
            hl_prev=zeros(n, hdim, W), hl_cur=zeros(n, hdim, W),  # left direction, rows r-1 and r
            hr_prev=zeros(n, hdim, W), hr_cur=zeros(n, hdim, W),  # right direction, rows r-1 and r
            feat=zeros(n, bilstm.forward_dir.input_to_state.in_channels, W)))  # layer input, row r
    for r in range(H):
        for L in layers:
            L["h_left"], L["c_left"] = L["left"]["pads"][r]
        for w in range(W):
            for ch in range(C):
                feat = px.input_feature(r, w)
                for L in layers:
                    d = L["left"]
                    L["feat"][:, :, w] = feat
                    z = torch.addmm(d["b"], feat, d["w_in"])
                    z = z + L["hl_prev"][:, :, w] @ d["w_above"] + L["h_left"] @ d["w_left"]
                    hv, cv = _cell(z, L["c_left"])
                    if ch == C - 1:
                        L["h_left"], L["c_left"] = hv, cv
                        L["hl_cur"][:, :, w] = hv
                    out = hv + L["hr_prev"][:, :, w] if r > 0 else hv
                    feat = feat + torch.addmm(L["res"][1], out, L["res"][0])
                px.draw(feat, r, w, ch)
        for L in layers:  # the right-to-left direction over the finished row r
            d = L["right"]
            z_in = torch.einsum("ncw,cg->nwg", L["feat"], d["w_in"]) + d["b"]
            h, c = d["pads"][r]
            for w in range(W - 1, -1, -1):
                h, c = _cell(z_in[:, w] + L["hr_prev"][:, :, w] @ d["w_above"] + h @ d["w_left"], c)
                L["hr_cur"][:, :, w] = h
            L["hl_prev"], L["hl_cur"] = L["hl_cur"], L["hl_prev"]
            L["hr_prev"], L["hr_cur"] = L["hr_cur"], L["hr_prev"]
    return x
