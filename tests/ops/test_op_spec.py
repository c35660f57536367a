"""Each op declared once (fastgen.ops._common.OpSpec): every public op goes through its spec's
one dispatch, the Triton siblings have the compiled ops' schemas, and fastgen.kernels is the
top-level kernels/ folder (no link)."""
import importlib
import os

import pytest
import torch

import fastgen
from fastgen import _ext
from fastgen.ops._common import SPECS
from tests.ops.test_double_backward import _cases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = ["reparameterize", "discriminator_loss", "generator_loss", "masked_linear", "masked_conv2d",
       "row_lstm_scan", "nade", "bernoulli_log_prob"]


class _Dispatched(Exception):
    pass


def _raise(*args, **kwargs):
    raise _Dispatched


def test_every_op_declares_one_spec():
    assert sorted(SPECS) == sorted(OPS)
    for name, spec in SPECS.items():
        assert spec.name == name
        assert spec.siblings() == [f"{name}_triton"] + ([name] if _ext.AVAILABLE else [])


@pytest.mark.parametrize("impl_name", ["reference", "cpp"])
@pytest.mark.parametrize("op", OPS)
def test_public_op_runs_through_its_spec(monkeypatch, op, impl_name):
    """The public op's implementation is chosen and run by its spec's dispatch alone: replacing
    the spec's reference (or its kernel call) is seen by the public op."""
    if impl_name == "cpp" and not _ext.AVAILABLE:
        pytest.skip("extension not built")
    spec = SPECS[op]
    monkeypatch.setattr(spec, "reference" if impl_name == "reference" else "call_kernel", _raise)
    fn, inputs = _cases("cpu")[op]
    with fastgen.use_impl(impl_name), pytest.raises(_Dispatched):
        fn(*inputs)


def _signature(schema):
    """Arguments (type, name, default) and return types of an operator schema."""
    return ([(str(a.type), a.name, a.default_value) for a in schema.arguments],
            [str(r.type) for r in schema.returns])


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
@pytest.mark.parametrize("op", OPS)
def test_triton_sibling_has_the_compiled_schema(op):
    """The siblings are interchangeable: the same arguments and results, forward and backward."""
    spec = SPECS[op]
    pairs = [(op, f"{op}_triton")]
    if spec.backward_schema is not None:
        pairs.append((f"{op}_backward", f"{op}_backward_triton"))
    for compiled, triton in pairs:
        want = getattr(torch.ops.fastgen, compiled).default._schema
        got = getattr(torch.ops.fastgen, triton).default._schema
        assert _signature(got) == _signature(want), f"{got} != {want}"


def test_kernels_package_is_the_top_level_folder():
    pytest.importorskip("triton")
    kernels = importlib.import_module("fastgen.kernels.gan_loss")
    assert os.path.samefile(kernels.__file__, os.path.join(ROOT, "kernels", "gan_loss.py"))
    assert not os.path.lexists(os.path.join(ROOT, "fastgen", "kernels"))  # no link, no copy


def test_kernels_gan_table_covers_the_reference_kinds():
    pytest.importorskip("triton")
    from fastgen.kernels import gan_loss as kernels
    from fastgen.reference import gan_loss as reference

    assert sorted(kernels.DISCRIMINATOR) == sorted(reference.DISCRIMINATOR_KINDS)
    assert sorted(kernels.GENERATOR) == sorted(reference.GENERATOR_KINDS)
