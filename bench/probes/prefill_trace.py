"""The Hopper prefill's per-block timeline (bench/NOTES.md items 90 and 91), from a library that
bench/probes/prefill_trace.sh built with stamps (clock64 and globaltimer) written over lse: D128
without the mask, hidden 2048, 16k tokens, at 1024, 2048 and 4096 queries. For each shape: the
median of 20 timed calls (256 MB flush before each, as yk bench), the relative error of out against
SDPA (1024 queries), each phase of a block (Q in shared memory, K_0 landed, S_0, the loop, the last
P V, the stores) at p10/p50/p90, the loop's time a tile, and the gaps between one block's end and
the next block's start on the same SM. TAG names the library (a, b); $OUT gets trace_TAG_S*.json
(every block's stamps) and trace_summary_TAG.json. Run from the repository root."""
import json, os, sys, statistics as st
import torch
sys.path.insert(0, "python")
from yaie_kernels import _attention as A

out_dir = os.environ.get("OUT", "/tmp")
tag = os.environ.get("TAG", "a")
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")


def spread(values):
    """p10, p50 and p90 of values."""
    v = sorted(values)
    return [round(v[len(v) // 10], 3), round(v[len(v) // 2], 3), round(v[9 * len(v) // 10], 3)]


def forward(q, k, v):
    return A._forward("flash_attention_forward", q, k, v, 0, None, False)


report = {}
for S in (1024, 2048, 4096):
    B, H, D = 16384 // S, 16, 128
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for _ in range(4):  # compile, load, warm; the last call's stamps are read
        flush.zero_()
        out, lse, _, _ = forward(q, k, v)
    times = []
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(20):
        flush.zero_()
        e0.record()
        forward(q, k, v)
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    err = None
    if S == 1024:
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).float()
        err = ((out.float() - ref).norm() / ref.norm()).item()
    stamps = lse.contiguous().view(torch.int64).view(B, H, S // 128, 64)[..., :10].reshape(-1, 10).cpu().tolist()
    blocks = [dict(gt0=r[0], gt6=r[1], c=r[2:9], sm=r[9] & 0xFFFF, tiles=r[9] >> 16) for r in stamps]
    ns_per_cycle = st.median((b["gt6"] - b["gt0"]) / max(1, b["c"][6] - b["c"][0]) for b in blocks)
    us = lambda cycles: cycles * ns_per_cycle / 1000
    phases = {name: spread(us(b["c"][j] - b["c"][i]) for b in blocks)
              for name, i, j in (("q_ready", 0, 1), ("k0_ready", 1, 2), ("s0", 2, 3), ("loop", 3, 4),
                                 ("last_pv", 4, 5), ("finish", 5, 6), ("total", 0, 6))}
    per_tile = st.median(us(b["c"][4] - b["c"][3]) / max(1, b["tiles"] - 1) for b in blocks)
    by_sm = {}
    for b in blocks:
        by_sm.setdefault(b["sm"], []).append(b)
    gaps = []
    for bl in by_sm.values():
        bl.sort(key=lambda b: b["gt0"])
        gaps += [(bl[i + 1]["gt0"] - bl[i]["gt6"]) / 1000 for i in range(len(bl) - 1)]
    first = min(b["gt0"] for b in blocks)
    starts = sorted((b["gt0"] - first) / 1000 for b in blocks)
    ends_per_sm = sorted((max(b["gt6"] for b in bl) - first) / 1000 for bl in by_sm.values())
    summary = dict(median_ms=st.median(times), rel_err=err, span_us=(max(b["gt6"] for b in blocks) - first) / 1000,
                   ns_per_cycle=ns_per_cycle, phases_us_p10_p50_p90=phases, loop_us_per_tile=per_tile,
                   sms=len(by_sm), blocks_per_sm=[min(map(len, by_sm.values())), max(map(len, by_sm.values()))],
                   gap_between_blocks_us_p10_p50_p90=spread(gaps),
                   first_wave_start_spread_us=starts[len(by_sm) - 1], sm_end_spread_us=[ends_per_sm[0], ends_per_sm[-1]])
    report[f"S{S}"] = summary
    print(f"S{S}:", json.dumps(summary), flush=True)
    with open(os.path.join(out_dir, f"trace_{tag}_S{S}.json"), "w") as f:
        json.dump(blocks, f)
with open(os.path.join(out_dir, f"trace_summary_{tag}.json"), "w") as f:
    json.dump(report, f, indent=1)
