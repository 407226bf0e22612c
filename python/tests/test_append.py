"""append_kv on numpy arrays (libyk's CPU fallback): new tokens' K and V land in exactly the pages
and offsets their index names, bit for bit, by slot mapping or CSR positions, in both layouts,
with RoPE on k fused in; bad input raises with nothing written."""

import numpy as np
import pytest

import yaie_kernels as yk
from conftest import hf_tables, randn, rope_ref

PAGE, KV_HEADS, DIM, BLOCKS = 4, 2, 16, 6


def caches(rng, layout, dtype=np.float32):
    shape = (BLOCKS, PAGE, KV_HEADS, DIM) if layout == "NHD" else (BLOCKS, KV_HEADS, PAGE, DIM)
    return randn(rng, shape, dtype), randn(rng, shape, dtype)


def place(cache, layout, block, offset, rows):
    """The expected cache: rows [kv_heads, dim] at (block, offset)."""
    if layout == "NHD":
        cache[block, offset] = rows
    else:
        cache[block, :, offset] = rows


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype, slot_type", [(np.float32, np.int64), (np.float16, np.int32)])
def test_slot_mapping_writes_each_token_at_its_slot(rng, layout, dtype, slot_type):
    kc, vc = caches(rng, layout, dtype)
    slots = np.array([9, 0, -1, 23, 5], slot_type)  # -1: a padding token, skipped
    k, v = randn(rng, (5, KV_HEADS, DIM), dtype), randn(rng, (5, KV_HEADS, DIM), dtype)
    want_k, want_v = kc.copy(), vc.copy()
    for t, s in enumerate(slots):
        if s >= 0:
            place(want_k, layout, s // PAGE, s % PAGE, k[t])
            place(want_v, layout, s // PAGE, s % PAGE, v[t])
    assert yk.append_kv(k, v, kc, vc, slots, layout=layout) is None
    np.testing.assert_array_equal(kc, want_k)
    np.testing.assert_array_equal(vc, want_v)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_csr_positions_write_through_each_sequences_blocks(rng, layout):
    kc, vc = caches(rng, layout)
    indptr, indices = np.array([0, 2, 3], np.int32), np.array([4, 1, 3], np.int32)  # seq 0: 4, 1; seq 1: 3
    batch, pos = np.array([0, 0, 1, 1], np.int32), np.array([5, 6, 0, -1], np.int32)  # -1: skipped
    k, v = randn(rng, (4, KV_HEADS, DIM)), randn(rng, (4, KV_HEADS, DIM))
    want_k, want_v = kc.copy(), vc.copy()
    for t in range(3):
        block = indices[indptr[batch[t]] + pos[t] // PAGE]
        place(want_k, layout, block, pos[t] % PAGE, k[t])
        place(want_v, layout, block, pos[t] % PAGE, v[t])
    yk.append_kv(k, v, kc, vc, layout=layout, batch_indices=batch, positions=pos, kv_indptr=indptr,
                 kv_indices=indices)
    np.testing.assert_array_equal(kc, want_k)
    np.testing.assert_array_equal(vc, want_v)


@pytest.mark.parametrize("style", ["neox", "gptj"])
def test_rope_on_the_way_in_equals_rope_then_append(rng, style):
    kc, vc = caches(rng, "NHD")
    k, v = randn(rng, (3, KV_HEADS, DIM)), randn(rng, (3, KV_HEADS, DIM))
    k_before = k.copy()
    slots, pos = np.array([2, 13, 7], np.int64), np.array([0, 31, 5], np.int64)
    cos, sin = hf_tables(32, DIM)
    table = np.concatenate([cos[:, :DIM // 2], sin[:, :DIM // 2]], axis=-1).astype(np.float32)
    plain_k, plain_v = kc.copy(), vc.copy()
    rotated = k.copy()
    yk.rope(rotated[:, :1].copy(), rotated, table, pos, style=style)  # rope() on k alone (q a throwaway)
    yk.append_kv(rotated, v, plain_k, plain_v, slots)
    yk.append_kv(k, v, kc, vc, slots, rope_positions=pos, cos_sin_cache=table, rope_style=style)
    np.testing.assert_array_equal(k, k_before)  # k itself is not rotated
    np.testing.assert_array_equal(kc, plain_k)  # the same bits as rope() then a plain append
    np.testing.assert_array_equal(vc, plain_v)
    # and against float64 rotary embeddings
    want = rope_ref(k.transpose(1, 0, 2)[None], cos, sin, pos[None], style=style)[0].transpose(1, 0, 2)
    np.testing.assert_allclose(kc[slots // PAGE, slots % PAGE], want, atol=1e-5)


def test_writes_a_kv_cache_managers_pages(rng):
    """The step an engine runs: append (slots), append_kv into the layer's views, attend."""
    with yk.KVCacheManager(8, PAGE, KV_HEADS, DIM, "float16", num_layers=2, device="cpu") as m:
        s = m.add_sequence()
        slots = m.append(s, 6)
        k, v = randn(rng, (6, KV_HEADS, DIM), np.float16), randn(rng, (6, KV_HEADS, DIM), np.float16)
        kc, vc = m.layer(1)
        other = [np.from_dlpack(t).copy() for t in m.layer(0)]
        yk.append_kv(k, v, kc, vc, slots)
        ka, va = np.from_dlpack(kc), np.from_dlpack(vc)
        np.testing.assert_array_equal(ka[slots // PAGE, slots % PAGE], k)
        np.testing.assert_array_equal(va[slots // PAGE, slots % PAGE], v)
        for before, t in zip(other, m.layer(0)):  # the other layer untouched (NaN bits too)
            np.testing.assert_array_equal(np.from_dlpack(t).view(np.uint16), before.view(np.uint16))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(slot_mapping=np.array([0, 24], np.int64)), yk.InvalidArgumentError,
     "append_kv: slot_mapping[1] = 24 is past the cache's 24 slots"),
    (dict(batch_indices=np.array([0, 1], np.int32), positions=np.array([0, 9], np.int32),
          kv_indptr=np.array([0, 1, 2], np.int32), kv_indices=np.array([0, 1], np.int32)), yk.InvalidArgumentError,
     "positions[1] = 9 is past the 1 blocks of sequence 1"),
    (dict(slot_mapping=np.array([0, 1]), rope_positions=np.array([0, 40]),
          cos_sin_cache=np.zeros((32, DIM), np.float32)), yk.InvalidArgumentError,
     "rope positions[1] = 40 is outside [0, 32)"),
    (dict(slot_mapping=np.array([0.0, 1.0], np.float32)), yk.InvalidArgumentError,
     "slot_mapping: expected dtype int32 or int64, got float32"),
    (dict(slot_mapping=np.array([0, 1]), positions=np.array([0, 1], np.int32)), ValueError,
     "give slot_mapping or FlashInfer's (batch_indices, positions, kv_indptr, kv_indices), not both"),
    (dict(), ValueError, "no index: give slot_mapping, or all of batch_indices"),
    (dict(batch_indices=np.zeros(2, np.int32), positions=np.zeros(2, np.int32)), ValueError,
     "missing kv_indptr, kv_indices"),
    (dict(slot_mapping=np.array([0, 1]), rope_positions=np.array([0, 1])), ValueError,
     "RoPE needs both rope_positions and cos_sin_cache"),
    (dict(slot_mapping=np.array([0, 1]), layout="NCHW"), ValueError, "layout 'NCHW' is not 'NHD'"),
    (dict(slot_mapping=np.array([0, 1]), rope_positions=np.array([0, 1]),
          cos_sin_cache=np.zeros((4, DIM), np.float32), rope_style="llama"), ValueError,
     "style must be 'neox'"),
], ids=["slot_out_of_range", "csr_position_out_of_range", "rope_position_out_of_range", "slot_dtype",
        "both_forms", "no_index", "csr_half", "rope_half", "layout", "rope_style"])
def test_bad_input_writes_nothing(rng, kwargs, error, message):
    kc, vc = caches(rng, "NHD")
    before = kc.copy(), vc.copy()
    k, v = randn(rng, (2, KV_HEADS, DIM)), randn(rng, (2, KV_HEADS, DIM))
    with pytest.raises(error) as e:
        yk.append_kv(k, v, kc, vc, **kwargs)
    assert message in str(e.value)
    np.testing.assert_array_equal(kc, before[0])
    np.testing.assert_array_equal(vc, before[1])


def test_read_only_cache_is_refused(rng):
    kc, vc = caches(rng, "NHD")
    kc.flags.writeable = False
    with pytest.raises(ValueError, match="append_kv: k_cache is read-only"):
        yk.append_kv(randn(rng, (1, KV_HEADS, DIM)), randn(rng, (1, KV_HEADS, DIM)), kc, vc, np.array([0]))
