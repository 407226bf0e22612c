"""rms_norm, cpu_rms_norm, fused_add_rms_norm and the gated activations on numpy arrays against
float64 references, and their bad inputs."""

import numpy as np
import pytest

import yaie_kernels as yk
from conftest import act_and_mul_ref, randn, rms_norm_ref, tol


class DLPackOnly:
    """An array that offers only the DLPack protocol and the array API namespace, to run the
    generic path (the one CuPy or JAX arrays take)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()

    def __array_namespace__(self):
        return _Namespace

    @property
    def dtype(self):
        return self.a.dtype

    @property
    def shape(self):
        return self.a.shape


class _Namespace:
    float32 = np.float32

    @staticmethod
    def empty(shape, dtype=None):
        return DLPackOnly(np.empty(shape, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(1, 8), (5, 64), (2, 3, 100), (4, 4096)])
def test_rms_norm_matches_reference(rng, dtype, shape):
    x = randn(rng, shape, dtype)
    w = randn(rng, shape[-1:], dtype)
    y = yk.rms_norm(x, w, 1e-5)
    assert type(y) is np.ndarray and y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y.astype(np.float64), rms_norm_ref(x, w, 1e-5), atol=tol(dtype) * 4, rtol=tol(dtype))


def test_rms_norm_strided_rows_and_out(rng):
    base = randn(rng, (6, 96))
    x = base[::2, :64]  # rows 192 elements apart, 64 of them used
    w = randn(rng, (64,))
    out = np.full((3, 64), np.nan, np.float32)
    assert yk.rms_norm(x, w, out=out) is out
    np.testing.assert_allclose(out, rms_norm_ref(x, w), atol=1e-5, rtol=1e-5)
    inplace = x.copy()
    yk.rms_norm(inplace, w, out=inplace)
    np.testing.assert_allclose(inplace, out, atol=0)


def test_cpu_rms_norm_equals_rms_norm(rng):
    x, w = randn(rng, (7, 32)), randn(rng, (32,))
    np.testing.assert_array_equal(yk.cpu_rms_norm(x, w, epsilon=1e-6), yk.rms_norm(x, w))


def test_read_only_weight_is_accepted(rng):
    x, w = randn(rng, (2, 16)), randn(rng, (16,))
    w.flags.writeable = False
    np.testing.assert_allclose(yk.rms_norm(x, w), rms_norm_ref(x, w), atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fused_add_rms_norm(rng, dtype):
    x, r, w = randn(rng, (4, 48), dtype), randn(rng, (4, 48), dtype), randn(rng, (48,), dtype)
    total = (x.astype(np.float32) + r.astype(np.float32)).astype(dtype)  # rounded to the dtype, as the op does
    x2, r2 = x.copy(), r.copy()
    got_x, got_r = yk.fused_add_rms_norm(x2, r2, w, 1e-6)
    assert got_x is x2 and got_r is r2
    np.testing.assert_array_equal(r2, total)
    np.testing.assert_allclose(x2.astype(np.float64), rms_norm_ref(total, w), atol=tol(dtype) * 4, rtol=tol(dtype))


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_act_and_mul_matches_reference(rng, act, dtype):
    fn = {"silu": yk.silu_and_mul, "gelu": yk.gelu_and_mul, "gelu_tanh": yk.gelu_tanh_and_mul}[act]
    x = randn(rng, (3, 5, 2 * 40), dtype, scale=2.0)
    y = fn(x)
    assert y.shape == (3, 5, 40) and y.dtype == dtype
    np.testing.assert_allclose(y.astype(np.float64), act_and_mul_ref(x, act), atol=tol(dtype) * 8, rtol=tol(dtype))


def test_silu_and_mul_strided_input_and_out(rng):
    x = randn(rng, (4, 3, 64))[:, 1, :]  # rows 192 apart
    out = np.empty((4, 32), np.float32)
    assert yk.silu_and_mul(x, out=out) is out
    np.testing.assert_allclose(out, act_and_mul_ref(x, "silu"), atol=1e-5, rtol=1e-5)


def test_generic_dlpack_arrays(rng):
    """Arrays that only speak DLPack cross through capsules; outputs come from their namespace."""
    x, w = randn(rng, (3, 24)), randn(rng, (24,))
    y = yk.rms_norm(DLPackOnly(x), DLPackOnly(w))
    assert isinstance(y, DLPackOnly)
    np.testing.assert_allclose(y.a, rms_norm_ref(x, w), atol=1e-5)
    s = yk.silu_and_mul(DLPackOnly(x))
    np.testing.assert_allclose(s.a, act_and_mul_ref(x, "silu"), atol=1e-5)


# ---- bad input: ValueError with the library's message ----


def test_rms_norm_weight_size_mismatch(rng):
    with pytest.raises(ValueError, match="rms_norm: weight has 4 elements, rows of x have 8") as e:
        yk.rms_norm(randn(rng, (2, 8)), randn(rng, (4,)))
    assert isinstance(e.value, yk.InvalidArgumentError) and e.value.status == "YK_ERR_INVALID_ARGUMENT"


def test_rms_norm_dtype_mismatch(rng):
    with pytest.raises(ValueError, match="rms_norm:.*weight"):
        yk.rms_norm(randn(rng, (2, 8)), randn(rng, (8,), np.float16))


def test_rms_norm_float64_rejected(rng):
    with pytest.raises(ValueError, match="expected dtype float32, float16 or bfloat16, got float64"):
        yk.rms_norm(randn(rng, (2, 8), np.float64), randn(rng, (8,), np.float64))


def test_rms_norm_negative_epsilon(rng):
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        yk.rms_norm(randn(rng, (2, 8)), randn(rng, (8,)), -1.0)


def test_rms_norm_non_contiguous_last_dim(rng):
    x = randn(rng, (4, 16))[:, ::2]
    with pytest.raises(ValueError, match="last dimension must be contiguous"):
        yk.rms_norm(x, randn(rng, (8,)))


def test_silu_and_mul_odd_width(rng):
    with pytest.raises(ValueError, match="silu_and_mul: rows of x must have an even, nonzero length"):
        yk.silu_and_mul(randn(rng, (2, 7)))


def test_fused_add_rms_norm_read_only(rng):
    x, r, w = randn(rng, (2, 8)), randn(rng, (2, 8)), randn(rng, (8,))
    r.flags.writeable = False
    with pytest.raises(ValueError, match="residual is read-only"):
        yk.fused_add_rms_norm(x, r, w)


def test_not_an_array():
    with pytest.raises(TypeError, match="rms_norm: input_tensor is a list"):
        yk.rms_norm([[1.0, 2.0]], np.ones(2, np.float32))


def test_big_endian_rejected():
    x = np.ones((2, 4), ">f4")
    with pytest.raises(ValueError, match="byte order"):
        yk.rms_norm(x, np.ones(4, np.float32))
