"""The memory pool on the CPU context (host memory, the same bookkeeping as on a GPU): allocation,
stats, running out, freeing twice, the engine's memory_pool_allocate / memory_pool_free over the
default pool, views through DLPack and their lifetime. torch cases skip without torch."""

import ctypes

import numpy as np
import pytest

import yaie_kernels as yk

KIB = 1024


@pytest.fixture
def pool():
    with yk.MemoryPool(64 * KIB, device="cpu") as p:
        yield p


def test_allocate_free_and_stats(pool):
    s = pool.stats()
    assert (s.total_bytes, s.used_bytes, s.free_bytes, s.allocations, s.on_device) == (64 * KIB, 0, 64 * KIB, 0, False)
    a = pool.allocate(1000)
    b = pool.allocate(256)
    assert isinstance(a, yk.PoolAllocation) and a.size == 1000 and a.pool is pool
    assert int(a) == a.ptr == a.data_ptr and a.ptr % 256 == 0 and b.ptr % 256 == 0
    assert b.ptr - a.ptr == 1024  # rounded up to 256, lowest address first
    s = pool.stats()
    assert (s.used_bytes, s.free_bytes, s.allocations, s.alloc_calls, s.high_water_bytes) == (1280, 64 * KIB - 1280,
                                                                                                2, 2, 1280)
    pool.free(a)
    s = pool.stats()
    assert (s.used_bytes, s.allocations, s.high_water_bytes) == (256, 1, 1280)
    # the freed extent (1024 bytes, the smallest that fits) is reused before the large tail
    c = pool.allocate(512)
    assert c.ptr == a.ptr
    assert pool.stats().fragmentation > 0
    pool.free(b.ptr)  # an address works as well
    pool.free(c)
    pool.free(None)
    s = pool.stats()
    assert (s.used_bytes, s.allocations, s.largest_free_bytes, s.fragmentation) == (0, 0, 64 * KIB, 0.0)


def test_allocation_is_a_writable_dlpack_buffer(pool):
    a = pool.allocate(300)
    arr = np.from_dlpack(a)
    assert arr.shape == (300,) and arr.dtype == np.uint8 and arr.flags.writeable
    assert a.__dlpack_device__() == (1, 0)
    arr[:] = np.arange(300) % 251
    assert ctypes.string_at(a.ptr, 300) == bytes((np.arange(300) % 251).astype(np.uint8))
    halves = np.from_dlpack(a)[:200].view(np.float16)  # reinterpreting, as torch's .view(dtype) does
    assert halves.shape == (100,) and halves.ctypes.data == a.ptr


def test_running_out_raises_memory_error_and_changes_nothing(pool):
    a = pool.allocate(60 * KIB)
    before = pool.stats()
    with pytest.raises(yk.OutOfMemoryError) as e:
        pool.allocate(8 * KIB)
    assert isinstance(e.value, MemoryError) and isinstance(e.value, RuntimeError)
    assert e.value.status == "YK_ERR_OUT_OF_MEMORY"
    assert "no free extent of 8192 bytes (4096 bytes free, the largest extent 4096)" in str(e.value)
    after = pool.stats()
    assert after.failed_allocs == before.failed_allocs + 1
    assert (after.used_bytes, after.allocations, after.alloc_calls) == (before.used_bytes, before.allocations,
                                                                         before.alloc_calls)
    pool.free(a)
    pool.allocate(8 * KIB)  # room again


def test_double_free_and_foreign_pointers_raise(pool):
    a = pool.allocate(100)
    pool.free(a)
    for bad in (a, a.ptr, a.ptr + 256, 12345):
        with pytest.raises(yk.InvalidArgumentError) as e:
            pool.free(bad)
        assert isinstance(e.value, ValueError) and "is not an allocation of this pool" in str(e.value)
    assert pool.stats().used_bytes == 0


@pytest.mark.parametrize("call, message", [
    (lambda p: p.allocate(0), "cannot allocate 0 bytes"),
    (lambda p: p.allocate(-5), "size is -5, which is negative"),
], ids=["zero", "negative"])
def test_bad_sizes(pool, call, message):
    with pytest.raises(ValueError) as e:
        call(pool)
    assert message in str(e.value)


def test_creation_errors():
    with pytest.raises(yk.InvalidArgumentError) as e:
        yk.MemoryPool(device="cpu")
    assert "a pool on a CPU context needs options.bytes" in str(e.value)
    with pytest.raises(yk.InvalidArgumentError) as e:
        yk.MemoryPool(100, device="cpu")
    assert "100 bytes is less than 256" in str(e.value)
    with pytest.raises(ValueError, match="is not 'cpu', 'cuda'"):
        yk.MemoryPool(1024, device="tpu")


def test_closed_pool_refuses_calls_and_views_keep_memory(pool):
    a = pool.allocate(64)
    arr = np.from_dlpack(a)
    arr[:] = 9
    pool.close()
    assert pool.closed
    with pytest.raises(ValueError, match="the memory pool is closed"):
        pool.allocate(16)
    with pytest.raises(ValueError, match="closed"):
        pool.stats()
    # the view (and the allocation object) still hold the memory: it is freed when they go
    arr[:] += 1
    assert bytes(arr) == bytes([10]) * 64


def test_engine_functions_use_a_default_pool():
    pool = yk.default_memory_pool("cpu")
    assert pool is yk.default_memory_pool("cpu") and pool.device == "cpu"
    assert pool.size_bytes == 1 << 30
    used = pool.stats().used_bytes
    a = yk.memory_pool_allocate(4096, device="cpu")
    b = yk.memory_pool_allocate(100, device="cpu")
    assert a.pool is pool and pool.stats().used_bytes == used + 4096 + 256
    np.from_dlpack(b)[:] = 1
    yk.memory_pool_free(a)
    yk.memory_pool_free(int(b))  # the address: looked up among the default pools
    assert pool.stats().used_bytes == used
    yk.memory_pool_free(None)
    yk.memory_pool_free(0)
    with pytest.raises(yk.InvalidArgumentError, match="is not a live allocation of a default memory pool"):
        yk.memory_pool_free(int(b))
    with pytest.raises(yk.InvalidArgumentError, match="is not an allocation of this pool"):
        yk.memory_pool_free(a)  # the object knows its pool: libyk says why
    with pytest.raises(ValueError, match="exists already"):
        yk.default_memory_pool("cpu", size_bytes=4096)
    with pytest.raises(ValueError, match="device or pool, not both"):
        yk.memory_pool_allocate(16, device="cpu", pool=pool)


def test_default_device(monkeypatch):
    """device=None: host memory with YK_DEVICE=cpu (or no CUDA device), else CUDA."""
    monkeypatch.setenv("YK_DEVICE", "cpu")
    a = yk.memory_pool_allocate(16)
    assert a.pool is yk.default_memory_pool("cpu") and a.__dlpack_device__() == (1, 0)
    yk.memory_pool_free(a)
    monkeypatch.delenv("YK_DEVICE")
    assert yk.default_memory_pool().device.startswith(("cpu", "cuda:"))


def test_engine_functions_take_a_pool(pool):
    a = yk.memory_pool_allocate(512, pool=pool)
    assert pool.stats().allocations == 1
    with pytest.raises(yk.OutOfMemoryError, match="memory_pool_allocate: yk_pool_alloc: no free extent"):
        yk.memory_pool_allocate(1 << 20, pool=pool)
    yk.memory_pool_free(a.ptr, pool=pool)
    assert pool.stats().allocations == 0


def test_torch_from_dlpack_views_the_allocation(pool):
    torch = pytest.importorskip("torch")
    a = pool.allocate(64)
    t = torch.from_dlpack(a)
    assert t.dtype == torch.uint8 and t.shape == (64,) and t.data_ptr() == a.ptr
    t.view(torch.float32)[:] = 2.5
    assert np.array_equal(np.from_dlpack(a).view(np.float32), np.full(16, 2.5, np.float32))


def test_cuda_pool_gives_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with yk.MemoryPool(1 << 20, device="cuda:0") as p:
        a = p.allocate(4096)
        assert p.stats().on_device and a.__dlpack_device__() == (2, 0)
        t = torch.from_dlpack(a)
        assert t.is_cuda and t.data_ptr() == a.ptr
        t.view(torch.float16).fill_(1.5)
        assert torch.all(t.view(torch.float16) == 1.5).item()
        del t
        p.free(a)
