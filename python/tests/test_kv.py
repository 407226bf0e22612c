"""The paged KV cache on the CPU context (host blocks, memcpy copies: the same tables and
bookkeeping as on a GPU), written and read through numpy views of its layers: appending, forks
and copy-on-write, freeing, running out, the page tables, swapping out and in, raw block swaps,
the errors. torch cases skip without torch, the CUDA one without a GPU."""

import numpy as np
import pytest

import yaie_kernels as yk
from conftest import randn

BS, HEADS, DIM, LAYERS = 4, 2, 8, 3


def make(layout="NHD", num_blocks=8, host_blocks=6, **kw):
    return yk.KVCacheManager(num_blocks, BS, HEADS, DIM, "float16", num_layers=LAYERS, layout=layout, device="cpu",
                             host_blocks=host_blocks, **kw)


@pytest.fixture(params=["NHD", "HND"])
def cache(request):
    with make(request.param) as m:
        yield m


def arrays(m, host=False):
    """Every layer's (K, V) as numpy views of the cache."""
    layer = m.host_layer if host else m.layer
    return [tuple(np.from_dlpack(t) for t in layer(i)) for i in range(m.num_layers)]


def token(m, a, slot):
    """The [heads, dim] of one slot in a layer array a."""
    b, off = divmod(int(slot), m.block_size)
    return a[b, off] if m.layout == "NHD" else a[b, :, off]


def write_tokens(m, rng, slots):
    """Random K and V for each slot in every layer; returns them [slot][layer] -> (k, v)."""
    layers = arrays(m)
    out = {}
    for s in slots:
        out[int(s)] = []
        for k, v in layers:
            kv = rng.standard_normal((2, HEADS, DIM)).astype(np.float16)
            token(m, k, s)[...] = kv[0]
            token(m, v, s)[...] = kv[1]
            out[int(s)].append(kv)
    return out


def read_seq(m, seq):
    """A sequence's K and V, token by token, through its block table: [tokens, layers, 2, heads, dim]."""
    info = m.seq_info(seq)
    layers = arrays(m, host=info.swapped_out)
    rows = []
    for t in range(info.tokens):
        slot = info.block_table[t // m.block_size] * m.block_size + t % m.block_size
        rows.append([[token(m, k, slot), token(m, v, slot)] for k, v in layers])
    return np.array(rows)


def test_layer_views_have_the_cache_shape_and_block_stride(cache):
    k, v = cache.layer(1)
    page = (BS, HEADS, DIM) if cache.layout == "NHD" else (HEADS, BS, DIM)
    assert k.shape == v.shape == (8, *page) and k.dtype == "float16" and k.__dlpack_device__() == (1, 0)
    assert cache.block_bytes == 2 * LAYERS * BS * HEADS * DIM * 2
    assert k.strides[0] == cache.block_bytes // 2  # not the compact page
    assert v.data_ptr - k.data_ptr == BS * HEADS * DIM * 2  # V's page follows K's within a block
    assert cache.layer(2)[0].data_ptr - k.data_ptr == 2 * BS * HEADS * DIM * 2
    ka = np.from_dlpack(k)
    assert ka.shape == k.shape and ka.strides[0] == cache.block_bytes and ka.flags.writeable
    assert ka.ctypes.data == k.data_ptr


def test_append_hands_out_slots_block_by_block(cache, rng):
    s = cache.add_sequence()
    assert cache.blocks_needed(s, 6) == 2
    slots = cache.append(s, 6)
    assert slots.dtype == np.int64 and slots.shape == (6,)
    info = cache.seq_info(s)
    assert (info.tokens, info.num_blocks, info.swapped_out) == (6, 2, False)
    assert info.block_table.dtype == np.int32
    want = [info.block_table[t // BS] * BS + t % BS for t in range(6)]
    assert slots.tolist() == want
    assert cache.blocks_needed(s, 2) == 0 and cache.blocks_needed(s, 3) == 1
    more = np.full(3, -1, np.int64)
    assert cache.append(s, 3, out=more) is more
    info = cache.seq_info(s)
    assert more.tolist() == [info.block_table[t // BS] * BS + t % BS for t in range(6, 9)]
    assert cache.info().free_blocks == 8 - 3
    assert cache.append(s, 0).shape == (0,)
    # what is written at the slots is what the sequence reads back through its table
    data = write_tokens(cache, rng, list(slots) + list(more))
    np.testing.assert_array_equal(read_seq(cache, s), np.array([data[int(x)] for x in list(slots) + list(more)]))


def test_block_views_cover_every_layer_of_one_block(cache, rng):
    s = cache.add_sequence()
    slots = cache.append(s, 5)
    data = write_tokens(cache, rng, slots)
    b = cache.seq_blocks(s)[1]  # tokens 4.. of s
    assert isinstance(b, yk.KVCacheBlock) and b.block_id == cache.seq_info(s).block_table[1] and not b.host
    keys, values = np.from_dlpack(b.keys), np.from_dlpack(b.values)
    page = (BS, HEADS, DIM) if cache.layout == "NHD" else (HEADS, BS, DIM)
    assert keys.shape == (LAYERS, *page) and b.size == BS and b.dtype == "float16"
    for layer in range(LAYERS):
        got_k = keys[layer, 0] if cache.layout == "NHD" else keys[layer, :, 0]
        got_v = values[layer, 0] if cache.layout == "NHD" else values[layer, :, 0]
        np.testing.assert_array_equal(got_k, data[int(slots[4])][layer][0])
        np.testing.assert_array_equal(got_v, data[int(slots[4])][layer][1])
    with pytest.raises(ValueError, match="block 8 is not in 0..7"):
        cache.block(8)
    assert cache.block(5, host=True).host


def test_fork_shares_blocks_and_copies_on_write(cache, rng):
    parent = cache.add_sequence()
    slots = cache.append(parent, 6)  # blocks [a, b], b half full
    data = write_tokens(cache, rng, slots)
    before = read_seq(cache, parent)
    child = cache.fork(parent)
    assert cache.seq_info(child).block_table.tolist() == cache.seq_info(parent).block_table.tolist()
    assert cache.info().free_blocks == 6 and cache.info().sequences == 2
    # the child's next token would land in the shared block b: it needs a private copy of it
    assert cache.blocks_needed(child, 1) == 1
    (slot,) = cache.append(child, 1)
    pt, ct = cache.seq_info(parent).block_table, cache.seq_info(child).block_table
    assert ct[0] == pt[0] and ct[1] != pt[1] and slot == ct[1] * BS + 2
    assert cache.info().pending_copies == 1
    cache.copy_blocks()  # before writing the new token: a copy overwrites its whole destination
    assert cache.info().pending_copies == 0
    for (k, v) in arrays(cache):  # the whole block, every layer, K and V: the bytes of the original
        np.testing.assert_array_equal(k[ct[1]], k[pt[1]])
        np.testing.assert_array_equal(v[ct[1]], v[pt[1]])
    new = write_tokens(cache, rng, [slot])
    np.testing.assert_array_equal(read_seq(cache, parent), before)  # the parent never sees the child's token
    np.testing.assert_array_equal(read_seq(cache, child), np.concatenate([before, [new[int(slot)]]]))
    # the parent's last block is its own again: no copy for its next token
    assert cache.blocks_needed(parent, 1) == 0
    (pslot,) = cache.append(parent, 1)
    assert pslot == pt[1] * BS + 2 and cache.info().pending_copies == 0
    del data


def test_free_returns_blocks_and_invalidates_the_id(cache):
    s = cache.add_sequence()
    cache.append(s, 9)  # 3 blocks
    c = cache.fork(s)
    cache.free(s)
    assert cache.info().free_blocks == 5  # the fork still holds them
    cache.free(c)
    info = cache.info()
    assert (info.free_blocks, info.sequences) == (8, 0)
    for call in (cache.free, cache.seq_info, lambda q: cache.append(q, 1), cache.fork):
        with pytest.raises(yk.NotFoundError) as e:
            call(c)
        assert isinstance(e.value, KeyError) and f"sequence {c} was freed" in str(e.value)
        assert e.value.status == "YK_ERR_NOT_FOUND"
    with pytest.raises(KeyError, match="is not a sequence of this cache"):
        cache.seq_info(12345)


def test_running_out_of_blocks_changes_nothing(cache):
    a = cache.add_sequence()
    cache.append(a, 7 * BS)
    b = cache.add_sequence()
    cache.append(b, 2)
    info, table = cache.info(), cache.seq_info(b)
    assert cache.blocks_needed(b, 2 + 2 * BS) == 2
    out = np.full(2 + 2 * BS, -7, np.int64)
    with pytest.raises(yk.OutOfMemoryError) as e:
        cache.append(b, 2 + 2 * BS, out=out)
    assert isinstance(e.value, MemoryError)
    assert "KVCacheManager.append: yk_kv_seq_append: 10 tokens need 2 free blocks, 0 are free" in str(e.value)
    assert cache.info() == info
    after = cache.seq_info(b)
    assert after.tokens == table.tokens and after.block_table.tolist() == table.block_table.tolist()
    assert (out == -7).all()
    cache.append(b, 2)  # what fits still does


def test_page_tables_match_the_sequences(cache):
    seqs = [cache.add_sequence() for _ in range(4)]
    for s, n in zip(seqs, (5, 1, 0, 9)):
        cache.append(s, n)
    order = [seqs[3], seqs[0], seqs[2], seqs[1], seqs[0]]  # an empty one, one listed twice
    infos = [cache.seq_info(s) for s in order]
    tables, lens = cache.block_tables(order)
    assert tables.dtype == lens.dtype == np.int32 and tables.shape == (5, 3)
    for row, length, i in zip(tables, lens, infos):
        assert length == i.tokens
        assert row.tolist() == i.block_table.tolist() + [0] * (3 - i.num_blocks)
    wide, _ = cache.block_tables(np.array(order), max_blocks=5)
    assert wide.shape == (5, 5) and (wide[:, :3] == tables).all() and (wide[:, 3:] == 0).all()
    with pytest.raises(yk.InvalidArgumentError, match="a sequence has 3 blocks, more than max_blocks 2"):
        cache.block_tables(order, max_blocks=2)
    indptr, indices, last = cache.csr(order)
    assert indptr.tolist() == [0, 3, 5, 5, 6, 8]
    assert indices.tolist() == sum((i.block_table.tolist() for i in infos), [])
    assert last.tolist() == [(i.tokens - 1) % BS + 1 if i.tokens else 0 for i in infos]
    empty = cache.csr([])
    assert [a.shape for a in empty] == [(1,), (0,), (0,)]
    with pytest.raises(ValueError, match="list of sequence ids"):
        cache.csr([[1, 2]])


def test_swap_out_and_in_round_trips_the_bytes(cache, rng):
    s = cache.add_sequence()
    write_tokens(cache, rng, cache.append(s, 7))
    other = cache.add_sequence()
    cache.append(other, 3)
    before = read_seq(cache, s)
    cache.swap_out(s)
    info = cache.seq_info(s)
    assert info.swapped_out and info.tokens == 7 and info.num_blocks == 2
    ci = cache.info()
    assert (ci.free_blocks, ci.free_host_blocks) == (7, 4)
    np.testing.assert_array_equal(read_seq(cache, s), before)  # now in the host blocks
    assert [b.host for b in cache.seq_blocks(s)] == [True, True]
    for call, what in ((lambda: cache.append(s, 1), "append"), (lambda: cache.fork(s), "fork"),
                       (lambda: cache.block_tables([other, s]), "block_tables"),
                       (lambda: cache.swap_out(s), "swap_out")):
        with pytest.raises(yk.InvalidArgumentError, match="swapped out"):
            call()
    cache.append(other, 4 * BS)  # the device blocks it released are handed out again
    write_tokens(cache, rng, range(8 * BS))  # and overwritten, every device block
    cache.swap_in(s)
    info = cache.seq_info(s)
    assert not info.swapped_out and cache.info().free_host_blocks == 6
    np.testing.assert_array_equal(read_seq(cache, s), before)
    cache.append(s, 1)
    assert cache.event is None
    cache.sync()


def test_swap_out_needs_host_blocks():
    with make(num_blocks=8, host_blocks=1) as m:
        s = m.add_sequence()
        m.append(s, 2 * BS)
        info = m.info()
        with pytest.raises(yk.OutOfMemoryError, match="needs 2 free host blocks, 1 are free"):
            m.swap_out(s)
        assert m.info() == info and not m.seq_info(s).swapped_out
    with make(host_blocks=0) as m:
        s = m.add_sequence()
        m.append(s, 1)
        with pytest.raises(yk.InvalidArgumentError, match="the cache has no host blocks"):
            m.swap_out(s)


def test_raw_block_swaps(cache, rng):
    s = cache.add_sequence()
    slots = cache.append(s, 8 * BS)
    write_tokens(cache, rng, slots)
    dev = [np.copy(a) for pair in arrays(cache) for a in pair]
    assert cache.swap_blocks_to_cpu([2, 5], host_block_ids=[0, 4]).tolist() == [0, 4]
    assert cache.swap_blocks_to_cpu([1]).tolist() == [1]  # the same id on the host by default
    host = [a for pair in arrays(cache, host=True) for a in pair]
    for d, h in zip(dev, host):
        np.testing.assert_array_equal(h[[0, 4, 1]], d[[2, 5, 1]])
    for a in (a for pair in arrays(cache) for a in pair):
        a[...] = 0
    assert cache.swap_blocks_from_cpu({0: 2, 4: 5, 1: 7}).tolist() == [2, 5, 7]
    now = [a for pair in arrays(cache) for a in pair]
    for d, n in zip(dev, now):
        np.testing.assert_array_equal(n[[2, 5, 7]], d[[2, 5, 1]])
        assert not n[[0, 1, 3, 4, 6]].any()
    with pytest.raises(yk.InvalidArgumentError, match=r"source block 8 \(entry 1\) is not in 0..7"):
        cache.swap_blocks_to_cpu([0, 8], host_block_ids=[0, 1])
    with pytest.raises(yk.InvalidArgumentError, match=r"destination block 6 \(entry 0\) is not in 0..5"):
        cache.swap_blocks_to_cpu([6])
    with pytest.raises(yk.InvalidArgumentError, match="destination block 3 appears twice"):
        cache.swap_blocks_from_cpu([0, 1], device_block_ids=[3, 3])
    with pytest.raises(ValueError, match="2 source blocks but 1 destinations"):
        cache.swap_blocks_to_cpu([0, 1], host_block_ids=[0])
    with pytest.raises(ValueError, match="already names the destinations"):
        cache.swap_blocks_to_cpu({0: 1}, host_block_ids=[1])


def test_creation(cache):
    assert (cache.num_blocks, cache.block_size, cache.num_heads, cache.head_dim, cache.num_layers) == (8, BS, HEADS,
                                                                                                        DIM, LAYERS)
    assert cache.device == "cpu" and cache.dtype == "float16" and cache.host_blocks == 6
    info = cache.info()
    assert (info.num_blocks, info.free_blocks, info.elem_bytes, info.on_device) == (8, 8, 2, False)
    with yk.KVCacheManager(None, BS, HEADS, DIM, "bfloat16", device="cpu", device_bytes=10 * 2 * BS * HEADS * DIM * 2
                           + 5) as m:
        assert m.num_blocks == 10 and m.dtype == "bfloat16" and m.layer(0)[0].dtype == "bfloat16"


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(dtype="float32"), ValueError, "dtype 'float32' is not float16, bfloat16 or float8_e4m3fn"),
    (dict(block_size=200), yk.InvalidArgumentError, "page_size 200 is not in 1..128"),
    (dict(num_heads=0), yk.InvalidArgumentError, "kv_heads (0) and head_dim (8) must be >= 1"),
    (dict(num_blocks=None), yk.InvalidArgumentError, "set num_blocks or device_bytes"),
    (dict(num_blocks=-1), ValueError, "num_blocks is -1, which is negative"),
    (dict(layout="NCHW"), ValueError, "layout 'NCHW' is not 'NHD' or 'HND'"),
    (dict(device="cuda:x"), ValueError, "is not 'cpu', 'cuda'"),
], ids=["dtype", "block_size", "heads", "no_size", "negative", "layout", "device"])
def test_creation_errors(kwargs, error, message):
    args = dict(num_blocks=8, block_size=BS, num_heads=HEADS, head_dim=DIM, dtype="float16", device="cpu")
    args.update(kwargs)
    with pytest.raises(error) as e:
        yk.KVCacheManager(**args)
    assert message in str(e.value)


def test_cache_in_a_pool_and_views_keep_it_alive():
    with yk.MemoryPool(1 << 16, device="cpu") as pool:
        m = make(pool=pool, host_blocks=0)
        assert pool.stats().used_bytes == 8 * m.block_bytes
        k = np.from_dlpack(m.layer(0)[0])
        m.close()
        with pytest.raises(ValueError, match="KVCacheManager.append: the cache is closed"):
            m.append(0, 1)
        assert pool.stats().used_bytes == 8 * m.block_bytes  # the view still holds the blocks
        k[...] = 1  # and they are still the cache's memory
        del k
        assert pool.stats().used_bytes == 0
        with pytest.raises(ValueError, match="is not the pool's"):
            yk.KVCacheManager(8, BS, HEADS, DIM, pool=pool, device="cuda:0")


def test_explicit_block_copies(cache, rng):
    """copy_blocks(src, dst): whole blocks, every layer's K and V, byte for byte; nothing else
    changes, and a recorded copy-on-write copy stays recorded for copy_blocks()."""
    s = cache.add_sequence()
    cache.append(s, 6)  # blocks 0, 1 (half full)
    child = cache.fork(s)
    cache.append(child, 1)  # its private copy of the shared half-full block: recorded
    for a in (a for pair in arrays(cache) for a in pair):
        a[...] = rng.standard_normal(a.shape)
    before = [np.copy(a) for pair in arrays(cache) for a in pair]
    info = cache.info()
    assert info.pending_copies == 1
    cache.copy_blocks([4, 7], [6, 3])
    assert cache.info() == info
    for b, a in zip(before, (a for pair in arrays(cache) for a in pair)):
        np.testing.assert_array_equal(a[[6, 3]], b[[4, 7]])
        np.testing.assert_array_equal(a[[0, 1, 2, 4, 5, 7]], b[[0, 1, 2, 4, 5, 7]])
    cache.copy_blocks({5: 4})  # a mapping, as the swap methods take
    for b, a in zip(before, (a for pair in arrays(cache) for a in pair)):
        np.testing.assert_array_equal(a[4], b[5])
    cache.copy_blocks()
    assert cache.info().pending_copies == 0
    pt, ct = cache.seq_info(s).block_table, cache.seq_info(child).block_table
    for a in (a for pair in arrays(cache) for a in pair):
        np.testing.assert_array_equal(a[ct[1]], a[pt[1]])


@pytest.mark.parametrize("args, error, message", [
    (([0, 1], [2, 2]), yk.InvalidArgumentError, "destination block 2 appears twice (pairs 0 and 1)"),
    (([0, 1], [1, 2]), yk.InvalidArgumentError, "block 1 is both a source (pair 1) and a destination (pair 0)"),
    (([0, 1], [2]), ValueError, "2 source blocks but 1 destinations"),
    (([0], None), ValueError, "give dst_block_ids"),
    (([0], [8]), yk.InvalidArgumentError, "KVCacheManager.copy_blocks: copy_blocks: pair 0: destination block 8 is "
                                          "not in 0..7"),
    (([-1], [3]), yk.InvalidArgumentError, "pair 0: source block -1 is not in 0..7"),
    (([1 << 33], [3]), ValueError, "src_block_ids holds 8589934592, outside int32"),
], ids=["dst_twice", "src_is_dst", "lengths", "no_dst", "range", "negative", "int32"])
def test_explicit_block_copies_bad_input(cache, args, error, message):
    k = np.from_dlpack(cache.layer(0)[0])
    k[...] = 1
    with pytest.raises(error) as e:
        cache.copy_blocks(*args)
    assert message in str(e.value)
    assert (k == 1).all()


def test_vllm_copy_blocks_over_caller_tensors(rng):
    """yk.copy_blocks(key_caches, value_caches, block_mapping): vLLM's call over per-layer tensors
    (here strided: every other block of a larger array), the mapping as pairs or a dict."""
    keys = [randn(rng, (12, BS, HEADS, DIM), np.float16)[::2] for _ in range(3)]
    values = [randn(rng, (12, BS, HEADS, DIM), np.float16)[::2] for _ in range(3)]
    before = [np.copy(a) for a in keys + values]
    assert yk.copy_blocks(keys, values, np.array([[0, 5], [3, 1]], np.int64)) is None
    for b, a in zip(before, keys + values):
        np.testing.assert_array_equal(a[[5, 1]], b[[0, 3]])
        np.testing.assert_array_equal(a[[0, 2, 3, 4]], b[[0, 2, 3, 4]])
    yk.copy_blocks(keys, values, {2: [4, 0]})  # vLLM's older {src: [dst, ...]}
    for b, a in zip(before, keys + values):
        np.testing.assert_array_equal(a[[4, 0]], b[[2, 2]])
    yk.copy_blocks(keys, values, [])  # nothing to copy
    with pytest.raises(yk.InvalidArgumentError, match=r"copy_blocks: caches\[3\] has other strides than caches\[0\]"):
        yk.copy_blocks(keys, [np.ascontiguousarray(v) for v in values], [[0, 1]])
    with pytest.raises(ValueError, match=r"must be \(source, destination\) pairs \[n, 2\], got shape \(3,\)"):
        yk.copy_blocks(keys, values, [0, 1, 2])
    with pytest.raises(ValueError, match="key_caches and value_caches are empty"):
        yk.copy_blocks([], [], [[0, 1]])
    frozen = np.copy(keys[0])
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"copy_blocks: key_caches\[0\] is read-only"):
        yk.copy_blocks([frozen], [], [[0, 1]])


def test_sequence_ids_from_numpy(cache):
    s = np.int64(cache.add_sequence())
    cache.append(s, 3)
    assert cache.seq_info(s).tokens == 3 and cache.fork(s) != s


def test_torch_views_of_the_cache(cache):
    torch = pytest.importorskip("torch")
    s = cache.add_sequence()
    slots = cache.append(s, 5)
    k, v = cache.layer(2)
    kt = torch.from_dlpack(k)
    assert kt.dtype == torch.float16 and tuple(kt.shape) == k.shape and kt.stride() == k.strides
    assert kt.data_ptr() == k.data_ptr
    b, off = divmod(int(slots[4]), BS)
    if cache.layout == "NHD":
        kt[b, off] = 3.0
    else:
        kt[b, :, off] = 3.0
    assert (token(cache, np.from_dlpack(k), slots[4]) == 3.0).all()
    vt = torch.from_dlpack(cache.block(b).values)
    assert vt.shape[0] == LAYERS


def test_cuda_cache_gives_cuda_views():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with yk.KVCacheManager(16, 16, 2, 64, torch.bfloat16, num_layers=2, device="cuda:0", host_blocks=4) as m:
        s = m.add_sequence()
        slots = torch.from_numpy(m.append(s, 20)).cuda()
        k, v = (torch.from_dlpack(t) for t in m.layer(1))
        assert k.is_cuda and k.dtype == torch.bfloat16 and k.stride(0) == m.block_bytes // 2
        new = torch.randn(20, 2, 64, device="cuda", dtype=torch.bfloat16)
        k[slots // 16, slots % 16] = new
        m.swap_out(s)
        m.sync()
        m.swap_in(s)
        m.sync()
        table = torch.from_numpy(m.seq_info(s).block_table).long().cuda()
        t = torch.arange(20, device="cuda")
        got = k[table[t // 16], t % 16]
        assert torch.equal(got, new)
