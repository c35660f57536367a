"""fastgen.ops.discriminator_loss / generator_loss: every runnable impl against the reference and
independent oracles from PyTorch (F.binary_cross_entropy_with_logits, F.softplus,
F.margin_ranking_loss, a dot product)."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import _ext
from fastgen.nn import GANLoss
from fastgen.ops import discriminator_loss, generator_loss
from fastgen.reference import gan_loss as reference
from tests.conftest import KERNEL_IMPLS, assert_close_bf16

# the kinds of the one table (fastgen.reference.gan_loss): a kind added there is tested here
D_KINDS = reference.DISCRIMINATOR_KINDS
G_KINDS = reference.GENERATOR_KINDS
# (real shape, fake shape): odd sizes, different shapes, one side empty, several Triton programs
# (BLOCK 2048) and several CPU chunks (16384) run in parallel (more than 65536 elements).
SHAPES = [((4, 5), (3,)), ((), (1,)), ((3, 7, 5), (2, 17)), ((1,), (2, 1, 3)), ((0,), (5,)), ((6, 0), (0, 3)),
          ((2049,), (33, 65)), ((70001,), (16385,))]
TOL = {torch.float32: dict(rtol=2e-6, atol=1e-6), torch.float64: dict(rtol=1e-13, atol=1e-15)}


def _logits(shape, dtype=torch.float64, device="cpu", seed=0, scale=3.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    return x.to(dtype=dtype, device=device).requires_grad_(requires_grad)


def _bce(x, target):
    return F.binary_cross_entropy_with_logits(x, torch.full_like(x, target))


def _hinge(x, sign):
    """mean max(0, 1 + sign * x) as margin_ranking_loss(x, 0, y=-sign, margin=1) = mean max(0,
    sign * x + 1) (NaN for an empty x, as torch.mean)."""
    return F.margin_ranking_loss(x, torch.zeros_like(x), torch.full_like(x, -sign), margin=1.0)


def _d_oracle(real, fake, kind):
    if kind == "bce":  # -mean log sigmoid(real) - mean log(1 - sigmoid(fake))
        return _bce(real, 1.0) + _bce(fake, 0.0)
    assert kind == "hinge"
    return _hinge(real, -1.0) + _hinge(fake, 1.0)  # mean relu(1 - real) + mean relu(1 + fake)


def _g_oracle(fake, kind):
    if kind == "minimax":  # mean log(1 - sigmoid(fake)) = -mean softplus(fake)
        return -_bce(fake, 0.0)
    if kind == "nonsaturating":
        return _bce(fake, 1.0)
    assert kind == "hinge"  # -mean fake as a dot product with -1/n (the mean of nothing is NaN)
    n = fake.numel()
    return -(fake.flatten() @ fake.new_full((n,), 1.0 / n)) if n else fake.sum() * float("nan")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", D_KINDS)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_discriminator_matches_reference_and_oracle(impl, device, shapes, kind, dtype):
    real = _logits(shapes[0], dtype, device, seed=1, requires_grad=True)
    fake = _logits(shapes[1], dtype, device, seed=2, requires_grad=True)
    loss = discriminator_loss(real, fake, kind)
    assert loss.shape == () and loss.dtype == dtype
    grads = torch.autograd.grad(loss * 1.5, (real, fake))
    ref = reference.discriminator_loss(real, fake, kind)
    ref_grads = torch.autograd.grad(ref * 1.5, (real, fake))
    oracle = _d_oracle(real, fake, kind)
    oracle_grads = torch.autograd.grad(oracle * 1.5, (real, fake))
    torch.testing.assert_close(loss, ref, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(loss, oracle, equal_nan=True, **TOL[dtype])
    assert math.isnan(loss.item()) == (real.numel() == 0 or fake.numel() == 0)
    for g, r, o in zip(grads, ref_grads, oracle_grads):
        torch.testing.assert_close(g, r, **TOL[dtype])
        torch.testing.assert_close(g, o, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", G_KINDS)
@pytest.mark.parametrize("shape", [(4, 5), (3, 7, 5), (0,), (2049,), (70001,)], ids=str)
def test_generator_matches_reference_and_oracle(impl, device, shape, kind, dtype):
    fake = _logits(shape, dtype, device, seed=3, requires_grad=True)
    loss = generator_loss(fake, kind)
    assert loss.shape == () and loss.dtype == dtype
    (grad,) = torch.autograd.grad(loss * -0.75, fake)
    ref = reference.generator_loss(fake, kind)
    (ref_grad,) = torch.autograd.grad(ref * -0.75, fake)
    oracle = _g_oracle(fake, kind)
    (oracle_grad,) = torch.autograd.grad(oracle * -0.75, fake)
    torch.testing.assert_close(loss, ref, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(loss, oracle, equal_nan=True, **TOL[dtype])
    if kind == "minimax":  # a second oracle: F.softplus (no overflow at |x| ~ 10)
        torch.testing.assert_close(loss, -F.softplus(fake, threshold=50.0).mean(), equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(grad, ref_grad, **TOL[dtype])
    torch.testing.assert_close(grad, oracle_grad, **TOL[dtype])


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)  # ours: the reference's is torch's
@pytest.mark.parametrize("kind", D_KINDS + tuple("g_" + k for k in G_KINDS))
def test_gradcheck_float64(impl, device, kind):
    real = _logits((3, 4), torch.float64, device, seed=4, requires_grad=True)
    fake = _logits((5,), torch.float64, device, seed=5, requires_grad=True)
    if kind.startswith("g_"):
        assert torch.autograd.gradcheck(lambda f: generator_loss(f, kind[2:]), (fake,))
    else:
        assert torch.autograd.gradcheck(lambda r, f: discriminator_loss(r, f, kind), (real, fake))


def test_only_needed_gradients_and_repeated_backward(impl, device):
    real = _logits((6, 3), torch.float64, device, seed=6)
    fake = _logits((4,), torch.float64, device, seed=7, requires_grad=True)
    loss = discriminator_loss(real, fake, "bce")  # real needs no gradient
    g1 = torch.autograd.grad(loss, fake, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss * 2.0, fake)[0]  # the saved gradient was not scaled in place
    torch.testing.assert_close(g2, 2.0 * g1, rtol=1e-15, atol=0)
    torch.testing.assert_close(g1, torch.sigmoid(fake.detach()) / fake.numel(), rtol=1e-13, atol=0)
    with torch.no_grad():
        loss = generator_loss(fake, "nonsaturating")
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference.generator_loss(fake.detach(), "nonsaturating"))


def test_unit_gradient_handed_on_without_copy_stays_exact(impl, device):
    """loss.backward() hands the saved gradient on without a copy (incoming gradient exactly 1):
    a retained graph run twice, in-place edits of .grad in between, and a non-leaf path stay
    exact."""
    real = _logits((5, 3), torch.float32, device, seed=11, requires_grad=True)
    fake = _logits((7,), torch.float32, device, seed=12, requires_grad=True)
    want = torch.autograd.grad(reference.discriminator_loss(real, fake, "bce"), (real, fake))
    loss = discriminator_loss(real, fake, "bce")
    loss.backward(retain_graph=True)
    torch.testing.assert_close((real.grad, fake.grad), want)
    real.grad.zero_()
    fake.grad.mul_(-3.0)  # in-place edits of .grad must not reach the saved gradient
    loss.backward()
    torch.testing.assert_close((real.grad, fake.grad), (want[0], -2.0 * want[1]))
    w = torch.tensor(1.5, device=device, requires_grad=True)  # non-leaf logits
    discriminator_loss(real.detach() * w, fake.detach() * w, "bce").backward()
    (want_w,) = torch.autograd.grad(reference.discriminator_loss(real.detach() * w, fake.detach() * w, "bce"), w)
    torch.testing.assert_close(w.grad, want_w)


def test_non_contiguous_inputs(impl, device):
    real = _logits((9, 6), torch.float32, device, seed=8, requires_grad=True)
    fake = _logits((5, 8, 2), torch.float32, device, seed=9, requires_grad=True)
    r, f = real.transpose(0, 1), fake[:, ::2, 1]
    assert not r.is_contiguous() and not f.is_contiguous()
    for kind in D_KINDS:
        loss = discriminator_loss(r, f, kind)
        ref = reference.discriminator_loss(r, f, kind)
        torch.testing.assert_close(loss, ref)
        g = torch.autograd.grad(loss, (real, fake))
        g_ref = torch.autograd.grad(ref, (real, fake))
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b)


def test_empty_mean_is_nan_like_torch_mean(impl, device):
    empty = torch.empty(0, 4, device=device, requires_grad=True)
    fake = _logits((5,), torch.float32, device, seed=10, requires_grad=True)
    loss = discriminator_loss(empty, fake, "hinge")
    assert math.isnan(loss.item()) and math.isnan(reference.discriminator_loss(empty, fake, "hinge").item())
    g_empty, g_fake = torch.autograd.grad(loss, (empty, fake))
    assert g_empty.shape == (0, 4)
    torch.testing.assert_close(g_fake, (fake.detach() > -1).float() / 5)
    assert math.isnan(generator_loss(empty, "minimax").item())
    assert math.isnan(discriminator_loss(empty, empty, "bce").item())


# lengths that put a NaN in the vector body and in the scalar tail of the CPU kernel (vectors
# of 4..16 elements) and in a partial Triton block; positions: first, middle, last
@pytest.mark.parametrize("n", [3, 37])
@pytest.mark.parametrize("kind", D_KINDS + tuple("g_" + k for k in G_KINDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nan_logit_anywhere_gives_nan_loss_like_reference(impl, device, kind, n, dtype):
    for side in ("real", "fake"):
        for pos in sorted({0, n // 2, n - 1}):
            real = _logits((n,), dtype, device, seed=30, scale=0.3, requires_grad=True)
            fake = _logits((n,), dtype, device, seed=31, scale=0.3, requires_grad=True)
            with torch.no_grad():
                (real if side == "real" else fake)[pos] = float("nan")
            if kind.startswith("g_"):
                if side == "real":
                    continue
                loss = generator_loss(fake, kind[2:])
                ref = reference.generator_loss(fake, kind[2:])
                inputs = (fake,)
            else:
                loss = discriminator_loss(real, fake, kind)
                ref = reference.discriminator_loss(real, fake, kind)
                inputs = (real, fake)
            assert math.isnan(loss.item()), f"{kind}: NaN at {side}[{pos}] of {n} gave {loss.item()}"
            assert math.isnan(ref.item())
            if kind in ("hinge", "g_hinge"):  # softplus' gradient at NaN is NaN in both: no oracle
                for a, r in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs)):
                    torch.testing.assert_close(a, r, equal_nan=True)


@pytest.mark.parametrize("kind", D_KINDS + tuple("g_" + k for k in G_KINDS))
def test_bf16_error_at_most_twice_reference(impl, device, kind):
    real = _logits((37, 41), torch.bfloat16, device, seed=11, requires_grad=True)
    fake = _logits((1001,), torch.bfloat16, device, seed=12, requires_grad=True)
    if kind.startswith("g_"):
        fn = lambda r, f, k=kind[2:]: generator_loss(f, k)  # noqa: E731
        ref_fn = lambda r, f, k=kind[2:]: reference.generator_loss(f, k)  # noqa: E731
    else:
        fn = lambda r, f: discriminator_loss(r, f, kind)  # noqa: E731
        ref_fn = lambda r, f: reference.discriminator_loss(r, f, kind)  # noqa: E731
    loss = fn(real, fake)
    assert loss.dtype == torch.bfloat16
    ref = ref_fn(real, fake)
    r64, f64 = real.detach().double().requires_grad_(), fake.detach().double().requires_grad_()
    truth = ref_fn(r64, f64)
    assert_close_bf16(loss, ref, truth)
    inputs = (fake,) if kind.startswith("g_") else (real, fake)
    inputs64 = (f64,) if kind.startswith("g_") else (r64, f64)
    for ours, theirs, true in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs),
                                  torch.autograd.grad(truth, inputs64)):
        assert ours.dtype == torch.bfloat16
        assert_close_bf16(ours, theirs, true)


EXTREME = [-1e4, -1e3, -100.0, -30.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 30.0, 100.0, 1e3, 1e4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_values_finite_and_exact(impl, device, dtype):
    x = torch.tensor(EXTREME, dtype=dtype, device=device)
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    cases = [(lambda r, f, k=k: discriminator_loss(r, f, k),
              lambda r, f, k=k: reference.discriminator_loss(r, f, k)) for k in D_KINDS]
    cases += [(lambda r, f, k=k: generator_loss(f, k), lambda r, f, k=k: reference.generator_loss(f, k))
              for k in G_KINDS]
    for fn, ref_fn in cases:
        real, fake = x.clone().requires_grad_(), x.flip(0).requires_grad_()
        loss = fn(real, fake)
        grads = torch.autograd.grad(loss, (real, fake), allow_unused=True)
        real64, fake64 = real.detach().double().requires_grad_(), fake.detach().double().requires_grad_()
        truth = ref_fn(real64, fake64)  # the reference in float64 is exact (logsigmoid)
        true_grads = torch.autograd.grad(truth, (real64, fake64), allow_unused=True)
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss.double(), truth, rtol=rtol, atol=0)
        for g, t in zip(grads, true_grads):
            assert (g is None) == (t is None)
            if g is not None:
                assert torch.isfinite(g).all()
                torch.testing.assert_close(g.double(), t, rtol=rtol, atol=torch.finfo(dtype).tiny)  # subnormals
    # the textbook formula log(1 + e^x), where e^x is finite (beyond, softplus(x) = x in fp64)
    x64 = x.double()
    sp = torch.where(x64 > 700, x64, torch.log1p(torch.exp(x64.clamp(max=700))))
    torch.testing.assert_close(generator_loss(x.double(), "minimax"), -sp.mean(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
def test_deterministic_across_thread_counts(impl, device):
    """The same loss and gradients, bit for bit, on 1 and on 2 threads: the kernels split the
    sum into fixed chunks and add the partial sums in order (no atomics, no per-thread partials)."""
    real = _logits((70001,), torch.float32, device, seed=13, requires_grad=True)
    fake = _logits((20000,), torch.float32, device, seed=14, requires_grad=True)
    previous = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            loss = discriminator_loss(real, fake, "bce")
            runs.append((loss.detach(), *torch.autograd.grad(loss, (real, fake))))
    finally:
        torch.set_num_threads(previous)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_opcheck_compiled_ops():
    real = _logits((5, 7), torch.float64, seed=15, requires_grad=True)
    fake = _logits((4,), torch.float64, seed=16, requires_grad=True)
    for kind in D_KINDS:
        torch.library.opcheck(torch.ops.fastgen.discriminator_loss.default, (real, fake, kind, True, True))
    torch.library.opcheck(torch.ops.fastgen.discriminator_loss.default,
                          (real.detach(), fake, "bce", False, True))
    for kind in G_KINDS:
        torch.library.opcheck(torch.ops.fastgen.generator_loss.default, (fake, kind, True))
    torch.library.opcheck(torch.ops.fastgen.generator_loss.default, (fake.detach(), "hinge", False))


def test_opcheck_triton_siblings():
    pytest.importorskip("triton")
    real = _logits((5, 7), torch.float32, seed=17, requires_grad=True)
    fake = _logits((4,), torch.float32, seed=18, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.discriminator_loss_triton.default, (real, fake, "bce", True, True))
    torch.library.opcheck(torch.ops.fastgen.generator_loss_triton.default, (fake, "minimax", True))


def test_torch_compile_fullgraph_forward_backward(impl, device):
    real = _logits((6, 10), torch.float32, device, seed=19, requires_grad=True)
    fake = _logits((7,), torch.float32, device, seed=20, requires_grad=True)

    def step(real, fake):
        return discriminator_loss(real, fake, "bce") + 0.5 * generator_loss(fake, "nonsaturating")

    torch._dynamo.reset()
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(real, fake)
    g = torch.autograd.grad(out, (real, fake))
    with fastgen.use_impl("reference"):
        ref = step(real, fake)
    g_ref = torch.autograd.grad(ref, (real, fake))
    torch.testing.assert_close(out, ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_bad_input_names_the_argument():
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="real_logits must be float32, float64 or bfloat16"):
        discriminator_loss(x.long(), x)
    with pytest.raises(TypeError, match="fake_logits must be float32, float64 or bfloat16"):
        discriminator_loss(x, torch.ones(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="fake_logits has dtype"):
        discriminator_loss(x, x.double())
    with pytest.raises(ValueError, match="fake_logits is on meta"):
        discriminator_loss(x, torch.empty(3, device="meta"))
    with pytest.raises(TypeError, match="real_logits must be a torch.Tensor"):
        discriminator_loss([1.0], x)
    with pytest.raises(ValueError, match="kind must be one of 'bce', 'hinge'; got 'wgan'"):
        discriminator_loss(x, x, "wgan")
    with pytest.raises(ValueError, match="kind must be one of .*got 'bce'"):
        generator_loss(x, "bce")
    with pytest.raises(TypeError, match="fake_logits must be float32"):
        generator_loss(x.half())
    with pytest.raises(ValueError, match="GANLoss: kind must be one of"):
        GANLoss("bce")


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_compiled_ops_reject_bad_input_directly():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="kind must be 'bce' or 'hinge'; got 'wgan'"):
        torch.ops.fastgen.discriminator_loss(x, x, "wgan", False, False)
    with pytest.raises(RuntimeError, match="fake_logits has dtype"):
        torch.ops.fastgen.discriminator_loss(x, x.double(), "bce", False, False)
    with pytest.raises(RuntimeError, match="fake_logits must be float32"):
        torch.ops.fastgen.generator_loss(x.long(), "hinge", False)
    with pytest.raises(ValueError, match="kind must be 'minimax'"):
        torch.ops.fastgen.generator_loss(x, "bce", False)
    # a gradient asked of an op called with its gradient flag off: a clear error, not a wrong grad
    leaf = x.clone().requires_grad_()
    loss, _ = torch.ops.fastgen.generator_loss(leaf, "hinge", False)
    with pytest.raises(RuntimeError, match="gradient flag False"):
        loss.backward()


@pytest.mark.parametrize("kind", ["minimax", "nonsaturating", "hinge"])
def test_gan_loss_module(impl, device, kind):
    crit = GANLoss(kind)
    real = _logits((8, 1), torch.float32, device, seed=21, requires_grad=True)
    fake = _logits((8, 1), torch.float32, device, seed=22, requires_grad=True)
    d_kind, g_kind = {"minimax": ("bce", "minimax"), "nonsaturating": ("bce", "nonsaturating"),
                      "hinge": ("hinge", "hinge")}[kind]
    torch.testing.assert_close(crit(fake, real), reference.discriminator_loss(real, fake, d_kind))
    torch.testing.assert_close(crit.discriminator(real, fake), crit(fake, real_logits=real))
    torch.testing.assert_close(crit(fake), reference.generator_loss(fake, g_kind))
    torch.testing.assert_close(crit.generator(fake), crit(fake))
    crit(fake).backward()
    assert fake.grad is not None and real.grad is None
    assert kind in repr(crit)


@pytest.mark.gpu
@pytest.mark.parametrize("impl_name", ["cuda", "triton"])
def test_gpu_large_grid_stride_and_two_stage_reduction(impl_name):
    """More elements than the CUDA grid covers in one stride (1024 blocks x 256 threads), and
    many stage-1 partials for the single-block stage 2."""
    real = _logits((3 * 1024 * 256 + 17,), torch.float32, "cuda", seed=24, requires_grad=True)
    fake = _logits((1000, 999), torch.float32, "cuda", seed=25, requires_grad=True)
    with fastgen.use_impl(impl_name):
        loss = discriminator_loss(real, fake, "bce")
        again = discriminator_loss(real, fake, "bce")
    assert torch.equal(loss, again)  # deterministic: no atomics
    grads = torch.autograd.grad(loss, (real, fake))
    ref = reference.discriminator_loss(real.double(), fake.double(), "bce")
    ref_grads = torch.autograd.grad(ref, (real, fake))
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-12)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="the compiled extension is not built")
def test_compiled_kinds_table_agrees_with_the_python_table():
    """The C++ kernels keep their own (kind -> terms) table; it must accept exactly the kinds
    of fastgen.reference.gan_loss and compute each of them as the reference does."""
    x = torch.linspace(-3, 3, 7)
    for kind in reference.DISCRIMINATOR_KINDS:
        out = torch.ops.fastgen.discriminator_loss(x, -x, kind, False, False)[0]
        torch.testing.assert_close(out, reference.discriminator_loss(x, -x, kind))
    for kind in reference.GENERATOR_KINDS:
        out = torch.ops.fastgen.generator_loss(x, kind, False)[0]
        torch.testing.assert_close(out, reference.generator_loss(x, kind))
    with pytest.raises(Exception, match="kind"):
        torch.ops.fastgen.discriminator_loss(x, x, "wasserstein", False, False)
    with pytest.raises(Exception, match="kind"):
        torch.ops.fastgen.generator_loss(x, "wasserstein", False)
    for formulation, (d_kind, g_kind) in reference.FORMULATIONS.items():
        assert d_kind in reference.DISCRIMINATOR_KINDS and g_kind in reference.GENERATOR_KINDS
        assert GANLoss(formulation).discriminator_kind == d_kind
