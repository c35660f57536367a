"""Reference for fastgen.ops.nade: the tied-weight NADE layer (Larochelle & Murray, 2011) in step order.

    v: (N, D) inputs in step order, W: (H, D) (column s: the weight of step s), c: (H,),
    V: (D, L, H), b: (D, L)
    a_0 = c,   a_t = c + sum_{s<t} W[:, s] v_s        (H,)  the shared running pre-activation
    h_t = sigmoid(a_t)
    logits[n, t, l] = V[t, l] . h_t + b[t, l]          -> (N, D, L)

`nade` is the formula every NADE implementation writes (all a_t at once by a cumulative sum,
materialising (N, D, H)); `nade_loop` is the literal recurrence, one step at a time, a second
oracle. Both are differentiable in all five arguments.
"""
import torch


def nade(v, W, c, V, b):
    """v: (N, D), W: (H, D), c: (H,), V: (D, L, H), b: (D, L) -> logits (N, D, L)."""
    n, d = v.shape
    h = W.shape[0]
    if d == 0:  # no steps (still a function of V and b, so it differentiates to zeros)
        return torch.einsum("ndh,dlh->ndl", v.new_zeros(n, 0, h), V) + b
    # a_t = c + sum_{s<t}: the cumulative sum of [c, contributions of steps 0..D-2] (torch.cumsum
    # accumulates float32 in float64 on the CPU)
    contrib = v[:, :-1, None] * W[:, :-1].t().unsqueeze(0)                  # (N, D-1, H)
    a = torch.cumsum(torch.cat([c.expand(n, 1, h), contrib], dim=1), dim=1)  # (N, D, H)
    hid = torch.sigmoid(a)
    return torch.einsum("ndh,dlh->ndl", hid, V) + b


def nade_loop(v, W, c, V, b):
    """The same as `nade`, as the literal loop over steps (O(N H) state)."""
    n, d = v.shape
    a = c.expand(n, -1)
    out = []
    for t in range(d):
        hid = torch.sigmoid(a)                                       # (N, H)
        out.append(hid @ V[t].t() + b[t])                            # (N, L)
        a = a + v[:, t, None] * W[:, t]
    if not out:
        return v.new_zeros(n, 0, V.shape[1])
    return torch.stack(out, dim=1)
