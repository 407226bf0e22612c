"""Attention over a paged KV cache: paged_attention_forward (vLLM's call, its dense block table)
and FlashInferPagedAttention (FlashInfer's CSR page table: plan/run decode, paged prefill and
cascade decode).

Caches are one layer's K and V: NHD [num_blocks, page_size, kv_heads, head_dim] (vLLM's flash
layout, FlashInfer's default) or HND [num_blocks, kv_heads, page_size, head_dim], any strides with
head_dim contiguous, so KVCacheManager.layer(i) views pass as they are. Page tables are int32 and
contiguous; where the host can read them libyk checks every entry before anything runs.
"""

import ctypes
import operator

from ._attention import _scale, _workspace
from ._host import _address, _np, int_array
from ._kv import _LAYOUTS, _c_int, _dtype_code
from ._lib import C, HOST_DEVICE_TYPES, AttentionParams, c_struct, context_for, raise_status
from ._pool import Handle, device_key, device_name
from ._tensor import _DLDataType, adapter, describe, pack, place, scratch, written

__all__ = ["paged_attention_forward", "FlashInferPagedAttention"]


@c_struct("yk_paged_kv")
class PagedKV(ctypes.Structure):
    """yk_paged_kv (include/yk/ops.h): the caches and one of the two page-table forms."""

    _fields_ = [("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p), ("layout", ctypes.c_int),
                ("block_tables", ctypes.c_void_p), ("context_lens", ctypes.c_void_p), ("kv_indptr", ctypes.c_void_p),
                ("kv_indices", ctypes.c_void_p), ("kv_last_page_len", ctypes.c_void_p),
                ("max_context_len", ctypes.c_int), ("k_scale", ctypes.c_float), ("v_scale", ctypes.c_float)]


@c_struct("yk_paged_plan_shape")
class _PlanShape(ctypes.Structure):
    """yk_paged_plan_shape."""

    _fields_ = [("dtype", _DLDataType), ("q_heads", ctypes.c_int), ("kv_heads", ctypes.c_int),
                ("head_dim", ctypes.c_int), ("page_size", ctypes.c_int), ("csr", ctypes.c_int),
                ("scale", ctypes.c_float), ("num_splits", ctypes.c_int), ("kv_dtype", _DLDataType)]


_DENSE = ("block_tables", "context_lens")
_CSR = ("kv_indptr", "kv_indices", "kv_last_page_len")


def _layout(layout, op):
    code = _LAYOUTS.get(str(layout).upper())
    if code is None:
        raise ValueError(f"{op}: layout {layout!r} is not 'NHD' ([num_blocks, page_size, kv_heads, head_dim]) or "
                         "'HND' ([num_blocks, kv_heads, page_size, head_dim])")
    return code


def _length(value, op, name):
    """A length bound the GPU sizes its work by (None: 0, unknown): a C int, not negative. A
    negative one would reach C as a bogus split count rather than an error where the host cannot
    read the tables."""
    v = 0 if value is None else _c_int(value, op, name)
    if v < 0:
        raise ValueError(f"{op}: {name} is {v}; it must be a token count (0 for unknown)")
    return v


def _caches(paged_kv_cache, op):
    """(k, v) descriptions from FlashInfer's paged_kv_cache: a (k_cache, v_cache) pair, or one
    tensor [num_blocks, 2, ...] holding K at index 0 and V at index 1 of its second dimension."""
    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise ValueError(f"{op}: paged_kv_cache must be (k_cache, v_cache) or one tensor [num_blocks, 2, ...], "
                             f"got {len(paged_kv_cache)} items")
        return describe(paged_kv_cache[0], op, "k_cache"), describe(paged_kv_cache[1], op, "v_cache")
    d = describe(paged_kv_cache, op, "paged_kv_cache")
    shape, strides = tuple(d[5]), tuple(d[6])
    if len(shape) != 5 or shape[1] != 2:
        raise ValueError(f"{op}: paged_kv_cache must be (k_cache, v_cache) or one tensor [num_blocks, 2, page_size, "
                         f"kv_heads, head_dim] (HND: [num_blocks, 2, kv_heads, page_size, head_dim]), got shape "
                         f"{shape}")
    page_shape, page_strides = (shape[0], *shape[2:]), (strides[0], *strides[2:])
    k = (d[0], d[1], d[2], d[3], d[4], page_shape, page_strides, d[7])
    v = (d[0] + strides[1] * d[4] // 8, d[1], d[2], d[3], d[4], page_shape, page_strides, d[7])
    return k, v


def _table(table, op, name):
    """(member names, descriptions) of a page table given as (block_tables, context_lens) or
    (kv_indptr, kv_indices, kv_last_page_len)."""
    if not isinstance(table, (tuple, list)) or len(table) not in (2, 3):
        raise ValueError(f"{op}: {name} must be (block_tables, context_lens) or (kv_indptr, kv_indices, "
                         "kv_last_page_len)")
    names = _DENSE if len(table) == 2 else _CSR
    return names, [describe(t, op, n) for t, n in zip(table, names)]


def kv_scales(k_scale, v_scale, op):
    """(k, v) scales of a float8 cache as C floats, None reading as 1 (sent as 0): positive and
    finite, else ValueError here (libyk refuses them too, and scales on 16-bit caches)."""
    out = []
    for value, name in ((k_scale, "k_scale"), (v_scale, "v_scale")):
        if value is None:
            out.append(0.0)
            continue
        v = float(value)
        if not (v > 0.0 and v != float("inf")):
            raise ValueError(f"{op}: {name} is {value!r}; a float8 cache's scale is positive and finite")
        out.append(v)
    return tuple(out)


def _paged_kv(buf, base, slot, k_ptr, v_ptr, layout, names, descs, max_context_len, scales=(0.0, 0.0)):
    """A yk_paged_kv with the table's DLTensors packed from slot on; returns it and the next slot."""
    kv = PagedKV(k_cache=k_ptr, v_cache=v_ptr, layout=layout, max_context_len=max_context_len, k_scale=scales[0],
                 v_scale=scales[1])
    for name, d in zip(names, descs):
        setattr(kv, name, pack(buf, base, slot, d))
        slot += 1
    return kv, slot


def _output(ad, like, shape, given, op, name, dtype=None):
    """(tensor, whether the caller gave it): given, checked writable, or a new one like `like`."""
    if given is None:
        return ad.empty(like, shape, dtype), False
    adapter(given, op, name).check_writable(given, op, name)
    return given, True


def _outputs(op, ad, q, qd, out, lse, return_lse, lse_shape):
    out, out_given = _output(ad, q, tuple(qd[5]), out, op, "out")
    want_lse = return_lse or lse is not None
    lse, lse_given = _output(ad, q, lse_shape, lse, op, "lse", "float32") if want_lse else (None, False)
    return out, out_given, lse, lse_given, want_lse


def _finish(op, out, out_given, lse, lse_given, want_lse):
    if out_given:
        written(out, op, "out")
    if lse_given:
        written(lse, op, "lse")
    return (out, lse) if want_lse else out


def _decode(op, ad, q, qd, kd, vd, layout, names, tables, max_context_len, params, out, lse, return_lse, plan=None,
            workspace=None, scales=(0.0, 0.0)):
    """One paged decode: yk_paged_attention_decode, or yk_paged_decode_run when a plan is given
    (plan: (yk_paged_plan*, its context))."""
    out, out_given, lse, lse_given, want_lse = _outputs(op, ad, q, qd, out, lse, return_lse, tuple(qd[5][:2]))
    od = describe(out, op, "out")
    ld = describe(lse, op, "lse") if want_lse else None
    wd = describe(workspace, op, "workspace") if workspace is not None else None
    ctx, stream = place(ad, qd)
    buf, base = scratch()
    kv, slot = _paged_kv(buf, base, 4, pack(buf, base, 2, kd), pack(buf, base, 3, vd), layout, names, tables,
                         max_context_len, scales)
    pq, po = pack(buf, base, 0, qd), pack(buf, base, 1, od)
    pl = pack(buf, base, slot, ld) if ld else None
    if plan is None:
        st = C.yk_paged_attention_decode(ctx, pq, ctypes.addressof(kv), ctypes.addressof(params), po, pl, stream)
    else:
        ctx = plan[1]  # the run leaves its message on the plan's context
        st = C.yk_paged_decode_run(plan[0], pq, ctypes.addressof(kv), po, pl,
                                   pack(buf, base, slot + 1, wd) if wd else None, stream)
    if st:
        raise_status(st, ctx, op)
    return _finish(op, out, out_given, lse, lse_given, want_lse)


def paged_attention_forward(q, k_cache, v_cache, block_tables, context_lens, max_context_len, *, layout="NHD",
                            scale=None, num_splits=0, out=None, lse=None, return_lse=False, k_scale=None,
                            v_scale=None):
    """Decode over a paged KV cache, vLLM's call (yk_paged_attention_decode): one query token a
    sequence against the context_lens[i] tokens its block table row names.

    q [num_seqs, q_heads, head_dim]; k_cache, v_cache one layer's blocks, [num_blocks, page_size,
    kv_heads, head_dim] (layout="NHD", vLLM's flash layout) or [num_blocks, kv_heads, page_size,
    head_dim] (layout="HND"), any block stride; kv_heads divides q_heads (GQA). block_tables int32
    [num_seqs, max_blocks] (token t of sequence i is in block block_tables[i, t // page_size] at
    offset t % page_size), context_lens int32 [num_seqs]. max_context_len: the longest context
    (vLLM's), which sizes the key splits on the GPU when the tables are in device memory; tables
    the host can read are checked and measured by libyk, and it is then not used. float16 or
    bfloat16 on the GPU, also float32 on the CPU. Caches of float8_e4m3fn are read as stored *
    k_scale (v_scale), vLLM's scales.

    Returns out like q (a new tensor of q's type, or out= written), and (out, lse) when lse= (a
    float32 [num_seqs, q_heads] tensor to write) or return_lse=True. scale: default
    1/sqrt(head_dim); num_splits: key splits a sequence on the GPU, 0 lets libyk choose."""
    op = "paged_attention_forward"
    ad = adapter(q, op, "q")
    qd = ad.describe(q, op, "q")
    kd, vd = describe(k_cache, op, "k_cache"), describe(v_cache, op, "v_cache")
    tables = [describe(block_tables, op, "block_tables"), describe(context_lens, op, "context_lens")]
    params = AttentionParams(scale=_scale(scale), num_splits=_c_int(num_splits, op, "num_splits"))
    return _decode(op, ad, q, qd, kd, vd, _layout(layout, op), _DENSE, tables,
                   _length(max_context_len, op, "max_context_len"), params, out, lse, return_lse,
                   scales=kv_scales(k_scale, v_scale, op))


def _plan_dtype(dtype, op):
    """(DLPack code, bits) of a plan's dtype; float32 passes too, for libyk to refuse with its reason."""
    name = str(getattr(dtype, "__name__", dtype)).lower().replace("torch.", "")
    return (2, 32) if name in ("float32", "float", "fp32") else _dtype_code(dtype, op)


def _positive(value, op, name):
    v = operator.index(value)
    if not 1 <= v < (1 << 31):
        raise ValueError(f"{op}: {name} is {v}; it must be a positive C int")
    return v


class FlashInferPagedAttention:
    """Attention over a paged KV cache with FlashInfer's page table (kv_indptr, kv_indices,
    kv_last_page_len: int32, sequence i owns blocks kv_indices[kv_indptr[i]:kv_indptr[i + 1]], its
    last one holding kv_last_page_len[i] tokens) and FlashInfer's wrapper shape:

        att = FlashInferPagedAttention(32, 8, 128, 16)              # q heads, kv heads, head_dim, page
        att.plan(kv_indptr, kv_indices, kv_last_page_len)           # once a step, on the host
        out = att.run(q, (k_cache, v_cache))                        # once a layer: only launches

    paged_kv_cache: (k_cache, v_cache) as paged_attention_forward's (a KVCacheManager.layer(i) pair
    too), or one tensor [num_blocks, 2, page_size, kv_heads, head_dim] (HND: [num_blocks, 2,
    kv_heads, page_size, head_dim]) with K and V at index 0 and 1, as FlashInfer's.

    Decode (plan/run, yk_paged_plan): plan() reads the sequences' lengths on the host (from the
    tables, copying device tables to the host, or from kv_lens=), decides the key splits and
    compiles the kernels; run() only checks shapes and launches, so it can be captured in a CUDA
    graph and stays correct while later steps change the tables' contents in place. On the GPU the
    tables must be in device (or pinned) memory, and the run's float32 workspace, when the split
    needs one, is kept in the object: workspace_buffer= if given, else allocated like kv_indptr
    (its tensor type and device) and grown only when a plan needs more. On the CPU (host tables,
    unless device= says otherwise) there is nothing to plan: run() is paged decode over the
    planned tables.

    prefill(q, paged_kv_cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len): queries of
    new tokens (chunked prefill, prefix extension) against their sequences' pages, which already
    hold them (yk_paged_attention_prefill); ragged q [total_q, q_heads, head_dim] through qo_indptr
    (int32 [batch + 1]), or q [batch, seq_q, q_heads, head_dim] with qo_indptr None. Causal by
    default, bottom-right aligned: query i of a sequence of len_q queries and len_k keys sees keys
    j <= i + len_k - len_q. Returns out like q (and lse [q_heads, total_q] or [batch, q_heads,
    seq_q] with return_lse).

    cascade_decode(q, paged_kv_cache, shared_kv, unique_kv): decode for a batch whose keys are one
    shared prefix followed by each request's own suffix (yk_cascade_attention_decode: the prefix's
    attention computed once for the batch, the suffixes' by paged decode, merged by lse), the
    two-level case of FlashInfer's MultiLevelCascadeAttentionWrapper. shared_kv is the prefix's
    page table (one sequence), unique_kv the suffixes' (batch sequences, empty ones allowed), each
    (kv_indptr, kv_indices, kv_last_page_len) or (block_tables, context_lens), over the same
    caches. Equals paged decode over prefix + suffix.

    Constructor: head counts, head_dim and page_size are checked against every call; layout
    "NHD" or "HND"; scale defaults to 1/sqrt(head_dim); causal (default True) is prefill's;
    num_splits 0 lets libyk choose decode's key splits; dtype (float16 or bfloat16; plan's
    q_data_type= overrides, default float16, as FlashInfer's) is what a GPU plan compiles for;
    device: where plans run ("cpu", "cuda:N"), by default the device of plan's kv_indptr."""

    def __init__(self, num_qo_heads, num_kv_heads, head_dim, page_size, *, layout="NHD", scale=None, causal=True,
                 num_splits=0, dtype=None, device=None, workspace_buffer=None):
        op = "FlashInferPagedAttention"
        self.num_qo_heads = _positive(num_qo_heads, op, "num_qo_heads")
        self.num_kv_heads = _positive(num_kv_heads, op, "num_kv_heads")
        self.head_dim = _positive(head_dim, op, "head_dim")
        self.page_size = _positive(page_size, op, "page_size")
        self._layout = _layout(layout, op)
        self.layout = "HND" if self._layout else "NHD"
        self.scale = scale
        self.causal = causal
        self.num_splits = _c_int(num_splits, op, "num_splits")
        self.dtype = dtype
        self._key = None if device is None else device_key(device, op)
        self.workspace_buffer = workspace_buffer
        self.workspace = workspace_buffer  # the buffer runs use, once a plan needs one
        self.workspace_floats = 0  # what the last GPU plan needs
        self._plan = None  # (Handle of the yk_paged_plan, its context, device key)
        self._planned = None  # (device key, the tables, host lengths)

    # ---- checks ----

    def _check(self, op, qd, kd):
        qs, ks = tuple(qd[5]), tuple(kd[5])
        checks = []
        if len(qs) >= 2:
            checks += [("q heads", self.num_qo_heads, qs[-2]), ("head_dim", self.head_dim, qs[-1])]
        if len(ks) == 4:
            heads, page = (ks[2], ks[1]) if self._layout == 0 else (ks[1], ks[2])
            checks += [("kv heads", self.num_kv_heads, heads), ("page_size", self.page_size, page)]
        for what, want, got in checks:
            if want != got:
                raise ValueError(f"FlashInferPagedAttention.{op}: this instance is for {want} {what}, got {got}")

    def _params(self):
        return AttentionParams(scale=_scale(self.scale), num_splits=self.num_splits)

    # ---- decode: plan and run ----

    def plan(self, kv_indptr, kv_indices, kv_last_page_len, *, kv_lens=None, q_data_type=None, kv_data_type=None):
        """Plans the decode of len(kv_indptr) - 1 sequences over these tables, which run() then
        reads (keep them alive and in place; later steps may rewrite their contents). kv_lens:
        the sequences' token counts on the host, when the tables should not be read there (a
        device table's copy synchronises); else computed from kv_indptr and kv_last_page_len.
        kv_data_type: the caches' dtype where it is not q's (float8_e4m3fn for a float8 cache), as
        FlashInfer's plan takes it."""
        op = "FlashInferPagedAttention.plan"
        np = _np()
        d = describe(kv_indptr, op, "kv_indptr")
        key = self._key if self._key is not None else (-1 if d[1] in HOST_DEVICE_TYPES else d[2])
        if kv_lens is None:
            indptr = int_array(kv_indptr, op, "kv_indptr", "int64")
            last = int_array(kv_last_page_len, op, "kv_last_page_len", "int64")
            if indptr.shape[0] != last.shape[0] + 1:
                raise ValueError(f"{op}: kv_indptr has {indptr.shape[0]} entries for {last.shape[0]} sequences "
                                 "(want one more)")
            pages = np.diff(indptr)
            kv_lens = np.where(pages > 0, (pages - 1) * self.page_size + last, 0)
        lens = int_array(kv_lens, op, "kv_lens")
        # checked here because on the CPU nothing is planned (libyk never sees kv_lens) and on the
        # GPU a plan for another batch would only fail at run(), layers later
        if len(d[5]) != 1:
            raise ValueError(f"{op}: kv_indptr must be 1-D [batch + 1], got shape {tuple(d[5])}")
        if lens.shape[0] != d[5][0] - 1:
            raise ValueError(f"{op}: kv_lens has {lens.shape[0]} entries for the {d[5][0] - 1} sequences of "
                             f"kv_indptr")
        if lens.shape[0] and int(lens.min()) < 0:
            raise ValueError(f"{op}: kv_lens holds {int(lens.min())}; lengths are token counts")
        tables = (kv_indptr, kv_indices, kv_last_page_len)
        if key < 0:
            self._planned = (key, tables, lens)
            return
        plan = self._plan
        if plan is None or plan[2] != key:
            ctx = context_for(key)
            out = ctypes.c_void_p()
            st = C.yk_paged_plan_create(ctx, ctypes.byref(out))
            if st:
                raise_status(st, ctx, op)
            plan = (Handle(out.value, C.yk_paged_plan_destroy), ctx, key)
        shape = _PlanShape(q_heads=self.num_qo_heads, kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                           page_size=self.page_size, csr=1, scale=_scale(self.scale), num_splits=self.num_splits)
        shape.dtype.code, shape.dtype.bits = _plan_dtype(q_data_type or self.dtype or "float16", op)
        shape.dtype.lanes = 1
        if kv_data_type is not None:
            shape.kv_dtype.code, shape.kv_dtype.bits = _dtype_code(kv_data_type, op)
            shape.kv_dtype.lanes = 1
        floats = ctypes.c_size_t()
        st = C.yk_paged_decode_plan(plan[0].ptr, ctypes.byref(shape), _address(lens), lens.shape[0],
                                    ctypes.byref(floats))
        if st:
            raise_status(st, plan[1], op)  # libyk's plan is as it was, and so is this object
        self._plan, self._planned = plan, None  # until the workspace is there too
        self.workspace_floats = floats.value
        if floats.value and self.workspace_buffer is None and (
                self.workspace is None or self.workspace.shape[0] < floats.value
                or describe(self.workspace, op, "workspace")[1:3] != d[1:3]):
            # grown, never shrunk: a graph captured with the old buffer stays valid while it fits
            self.workspace = adapter(kv_indptr, op, "kv_indptr").empty(kv_indptr, (floats.value,), "float32")
        self._planned = (key, tables, lens)

    def run(self, q, paged_kv_cache, *, out=None, lse=None, return_lse=False, k_scale=None, v_scale=None):
        """Decode over the planned tables: q [batch, q_heads, head_dim]; returns out like q, and
        (out, lse) with lse= (float32 [batch, q_heads]) or return_lse=True. k_scale, v_scale: a
        float8 cache's scales (FlashInfer's), None for 1."""
        op = "FlashInferPagedAttention.run"
        scales = kv_scales(k_scale, v_scale, op)
        if self._planned is None:
            raise ValueError(f"{op}: no plan: call plan() first")
        key, tables, lens = self._planned
        ad = adapter(q, op, "q")
        qd = ad.describe(q, op, "q")
        kd, vd = _caches(paged_kv_cache, op)
        self._check("run", qd, kd)
        descs = [describe(t, op, n) for t, n in zip(tables, _CSR)]
        longest = int(lens.max()) if lens.shape[0] else 0
        if key < 0:
            return _decode(op, ad, q, qd, kd, vd, self._layout, _CSR, descs, longest, self._params(), out, lse,
                           return_lse, scales=scales)
        plan = self._plan
        workspace = self.workspace if self.workspace_floats else None
        return _decode(op, ad, q, qd, kd, vd, self._layout, _CSR, descs, longest, None, out, lse, return_lse,
                       plan=(plan[0].ptr, plan[1]), workspace=workspace, scales=scales)

    forward = run

    # ---- prefill and cascade ----

    def prefill(self, q, paged_kv_cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len, *, causal=None,
                max_seqlen_q=0, out=None, return_lse=False, k_scale=None, v_scale=None):
        """Paged prefill (see the class): no plan needed. max_seqlen_q: the longest query run,
        needed on the GPU when qo_indptr is in device memory. k_scale, v_scale: a float8 cache's."""
        op = "FlashInferPagedAttention.prefill"
        scales = kv_scales(k_scale, v_scale, op)
        ad = adapter(q, op, "q")
        qd = ad.describe(q, op, "q")
        kd, vd = _caches(paged_kv_cache, op)
        self._check("prefill", qd, kd)
        cq = describe(qo_indptr, op, "qo_indptr") if qo_indptr is not None else None
        tables = [describe(t, op, n) for t, n in zip((kv_indptr, kv_indices, kv_last_page_len), _CSR)]
        shape = tuple(qd[5])
        if len(shape) == 4:
            lse_shape = (shape[0], shape[2], shape[1])  # [batch, heads, seq_q]
        elif len(shape) == 3:
            lse_shape = (shape[1], shape[0])  # ragged: [heads, total_q]
        else:
            raise ValueError(f"{op}: q must be ragged [total_q, q_heads, head_dim] (with qo_indptr) or [batch, seq_q, "
                             f"q_heads, head_dim], got shape {shape}")
        out, out_given, lse, lse_given, want_lse = _outputs(op, ad, q, qd, out, None, return_lse, lse_shape)
        od = describe(out, op, "out")
        ld = describe(lse, op, "lse") if want_lse else None
        ctx, stream = place(ad, qd)
        buf, base = scratch()
        kv, slot = _paged_kv(buf, base, 4, pack(buf, base, 2, kd), pack(buf, base, 3, vd), self._layout, _CSR, tables,
                             0, scales)
        params = AttentionParams(causal=1 if (self.causal if causal is None else causal) else 0,
                                 scale=_scale(self.scale), cu_seqlens_q=pack(buf, base, slot, cq) if cq else None,
                                 max_seqlen_q=_length(max_seqlen_q, op, "max_seqlen_q"))
        if stream is not None:  # a few queries' split partials from the framework's allocator
            ws, params.workspace = _workspace(ad, q, buf, base, slot + 2, op, self._prefill_floats(
                ctx, shape, qo_indptr, cq, params.max_seqlen_q, tables[1][5][0], tables[0][5][0] - 1))
        st = C.yk_paged_attention_prefill(ctx, pack(buf, base, 0, qd), ctypes.addressof(kv), ctypes.addressof(params),
                                          pack(buf, base, 1, od), pack(buf, base, slot + 1, ld) if ld else None,
                                          stream)
        if st:
            raise_status(st, ctx, op)
        return _finish(op, out, out_given, lse, lse_given, want_lse)

    def _prefill_floats(self, ctx, shape, qo_indptr, cq, max_seqlen_q, pages, batch):
        """The workspace a prefill's few queries a sequence take on the decode kernel (0: none), sized
        as libyk sizes the call's split where the tables are in device memory: every sequence as
        long as all of kv_indices' pages. A ragged q's longest run is max_seqlen_q, else read from a
        host qo_indptr (a device one without it is refused by the call)."""
        if len(shape) == 4:
            total_q, longest = shape[0] * shape[1], shape[1]
        else:
            total_q, longest = shape[0], max_seqlen_q
            if not longest and cq is not None and cq[1] in HOST_DEVICE_TYPES:
                runs = _np().diff(int_array(qo_indptr, "FlashInferPagedAttention.prefill", "qo_indptr", "int64"))
                longest = int(runs.max()) if runs.size else 0
        keys = pages * self.page_size
        if batch <= 0 or not longest or not keys:
            return 0
        return C.yk_flash_attention_forward_workspace_floats(ctx, batch, total_q, longest, self.num_qo_heads,
                                                              self.num_kv_heads, self.head_dim, keys, keys, 0)

    def cascade_workspace_floats(self, batch, max_suffix_len):
        """Float32 elements of the workspace cascade_decode(workspace=) needs for batch requests
        whose suffixes are at most max_suffix_len tokens, on this object's device (0: none). Size
        it once for the largest batch an engine runs, so no call allocates."""
        op = "FlashInferPagedAttention.cascade_workspace_floats"
        batch, max_suffix_len = _length(batch, op, "batch"), _length(max_suffix_len, op, "max_suffix_len")
        ctx = context_for(-1 if self._key is None else self._key)
        return int(C.yk_cascade_decode_workspace_floats(ctx, batch, self.num_qo_heads, self.num_kv_heads,
                                                         self.head_dim, max_suffix_len, self.num_splits))

    def cascade_decode(self, q, paged_kv_cache, shared_kv, unique_kv, *, prefix_len=0, max_suffix_len=0, out=None,
                       lse=None, return_lse=False, workspace=None, k_scale=None, v_scale=None):
        """Cascade decode (see the class): q [batch, q_heads, head_dim]; returns out like q, and
        (out, lse) with lse= or return_lse=True. For tables in device memory, which the host
        cannot measure: prefix_len, exactly the prefix's tokens (with a dense shared table the GPU
        cuts the prefix into chunks by it, so it must not overstate), and max_suffix_len, a bound
        on the suffixes (it sizes their key splits); 0 for unknown. Unused where the host reads the
        tables. workspace: float32, at least cascade_workspace_floats(batch, max_suffix_len)
        elements in q's memory; without it the GPU's scratch is allocated on the stream for the
        call. k_scale, v_scale: a float8 cache's."""
        op = "FlashInferPagedAttention.cascade_decode"
        scales = kv_scales(k_scale, v_scale, op)
        ad = adapter(q, op, "q")
        qd = ad.describe(q, op, "q")
        kd, vd = _caches(paged_kv_cache, op)
        self._check("cascade_decode", qd, kd)
        shared_names, shared = _table(shared_kv, op, "shared_kv")
        unique_names, unique = _table(unique_kv, op, "unique_kv")
        out, out_given, lse, lse_given, want_lse = _outputs(op, ad, q, qd, out, lse, return_lse, tuple(qd[5][:2]))
        od = describe(out, op, "out")
        ld = describe(lse, op, "lse") if want_lse else None
        ctx, stream = place(ad, qd)
        buf, base = scratch()
        pk, pv = pack(buf, base, 2, kd), pack(buf, base, 3, vd)
        skv, slot = _paged_kv(buf, base, 4, pk, pv, self._layout, shared_names, shared,
                              _length(prefix_len, op, "prefix_len"), scales)
        ukv, slot = _paged_kv(buf, base, slot, pk, pv, self._layout, unique_names, unique,
                              _length(max_suffix_len, op, "max_suffix_len"), scales)
        params = self._params()  # held here: C reads it through its address
        if workspace is not None:
            params.workspace = pack(buf, base, slot + 1, describe(workspace, op, "workspace"))
        st = C.yk_cascade_attention_decode(ctx, pack(buf, base, 0, qd), ctypes.addressof(skv), ctypes.addressof(ukv),
                                           ctypes.addressof(params), pack(buf, base, 1, od),
                                           pack(buf, base, slot, ld) if ld else None, stream)
        if st:
            raise_status(st, ctx, op)
        return _finish(op, out, out_given, lse, lse_given, want_lse)

    def __repr__(self):
        where = "" if self._key is None else f", device={device_name(self._key)!r}"
        return (f"FlashInferPagedAttention(num_qo_heads={self.num_qo_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, page_size={self.page_size}, layout={self.layout!r}, scale={self.scale}, "
                f"causal={self.causal}, num_splits={self.num_splits}{where})")
