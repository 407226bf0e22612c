"""Per-call host overhead of the Python bindings for a small op, against the same C call made
directly through ctypes.

    YK_LIBRARY=build/libyk.so python python/bench_overhead.py            # on a GPU, with torch
    YK_LIBRARY=build/libyk.so python python/bench_overhead.py --device cpu

What it times: the host time of one call of rms_norm on a tiny tensor (default [1, 128] bf16),
as the median over rounds of the mean of --calls back-to-back calls. The GPU is synchronised
between rounds (not inside them), so kernels never back up into the launch queue: what is
measured is the time the calling thread spends per call.

Rows:
  C via ctypes      yk_rms_norm with DLTensors, context and stream prepared once: the floor
  yk.rms_norm(out=) the bindings writing a preallocated output
  yk.rms_norm       the bindings as the engine calls them (allocates the output each call)
  torch F.rms_norm  torch eager, for scale
The target (issue 7) is yk.rms_norm within 5 us of the ctypes row; for comparison, Triton's
cached launch costs about 13.7 us and torch eager about 8 us.
"""

import argparse
import ctypes
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the package beside this script, installed or not

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import yaie_kernels as yk  # noqa: E402
from yaie_kernels import _lib  # noqa: E402

DTYPES = {"bf16": (torch.bfloat16, 4, 16), "f16": (torch.float16, 2, 16), "f32": (torch.float32, 2, 32)}


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


def dl_tensor(t, code, bits, keep):
    shape = (ctypes.c_int64 * t.dim())(*t.shape)
    strides = (ctypes.c_int64 * t.dim())(*t.stride())
    keep += [shape, strides]
    dev = DLDevice(2, t.get_device()) if t.is_cuda else DLDevice(1, 0)
    return DLTensor(t.data_ptr(), dev, t.dim(), DLDataType(code, bits, 1), shape, strides, 0)


def direct_call(x, w, out, eps, code, bits):
    """yk_rms_norm through ctypes with everything hoisted: a context of its own, DLTensors built
    once, the stream read once. Returns a no-argument function making one call."""
    lib = ctypes.CDLL(_lib.library_path())
    lib.yk_ctx_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.yk_rms_norm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_float] + [ctypes.c_void_p] * 2
    lib.yk_rms_norm.restype = ctypes.c_int
    ctx = ctypes.c_void_p()
    if lib.yk_ctx_create(None, ctypes.byref(ctx)) != 0:
        raise RuntimeError("yk_ctx_create failed")
    keep = []
    tx, tw, to = (dl_tensor(t, code, bits, keep) for t in (x, w, out))
    px, pw, po = (ctypes.addressof(t) for t in (tx, tw, to))
    stream = torch.cuda.current_stream().cuda_stream if x.is_cuda else None
    fn, c = lib.yk_rms_norm, ctx.value

    def call():
        return fn(c, px, pw, eps, po, stream)

    call.keep = (keep, tx, tw, to, lib)
    if call() != 0:
        raise RuntimeError("yk_rms_norm failed through ctypes")
    return call


def measure(fns, calls, rounds, sync):
    """{name: [mean us per call of each round]}, the methods interleaved round by round."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            t1 = time.perf_counter_ns()
            times[name].append((t1 - t0) / calls / 1e3)
    sync()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--calls", type=int, default=200, help="calls a round")
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    dtype, code, bits = DTYPES[args.dtype]
    if args.device == "cpu" and dtype == torch.bfloat16:
        dtype, code, bits = DTYPES["f32"]  # the numbers are about the host path; keep the CPU maths cheap
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.rows, args.hidden, device=dev, dtype=dtype)
    w = torch.randn(args.hidden, device=dev, dtype=dtype)
    out = torch.empty_like(x)
    eps = 1e-6
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    direct = direct_call(x, w, out, eps, code, bits)
    ref = F.rms_norm(x.float(), (args.hidden,), w.float(), eps)
    got = yk.rms_norm(x, w, eps)
    sync()
    err = (got.float() - ref).abs().max().item()
    assert err < 0.05, f"yk.rms_norm differs from F.rms_norm by {err}"

    fns = {
        "C via ctypes": direct,
        "yk.rms_norm(out=)": lambda: yk.rms_norm(x, w, eps, out=out),
        "yk.rms_norm": lambda: yk.rms_norm(x, w, eps),
        "torch F.rms_norm": lambda: F.rms_norm(x, (args.hidden,), w, eps),
    }
    measure(fns, args.calls, 3, sync)  # warm-up: kernels compiled and loaded, allocator primed
    times = measure(fns, args.calls, args.rounds, sync)

    floor = statistics.median(times["C via ctypes"])
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU fallback"
    print(f"rms_norm [{args.rows}, {args.hidden}] {str(dtype).replace('torch.', '')} on {name}; "
          f"{args.rounds} rounds x {args.calls} calls; libyk {yk.library_version()} ({_lib.library_path()})")
    print(f"{'method':<20} {'median us':>10} {'p10':>8} {'p90':>8} {'over C':>8}")
    for method, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        med = statistics.median(ts)
        print(f"{method:<20} {med:>10.2f} {q[0]:>8.2f} {q[-1]:>8.2f} {med - floor:>+8.2f}")
    over = statistics.median(times["yk.rms_norm"]) - floor
    print(f"binding overhead (yk.rms_norm - C via ctypes): {over:.2f} us; target <= 5 us: "
          f"{'met' if over <= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
