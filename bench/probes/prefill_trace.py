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
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
report = {}
for S in (1024, 2048, 4096):
    B, H, D = 16384 // S, 16, 128
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for rep in range(4):
        flush.zero_()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        out, lse, _, _ = A._forward("flash_attention_forward", q, k, v, 0, None, False)
        e1.record()
    torch.cuda.synchronize()
    ms = e0.elapsed_time(e1)
    times = []
    for rep in range(20):
        flush.zero_()
        e0.record()
        A._forward("flash_attention_forward", q, k, v, 0, None, False)
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    times.sort()
    err = None
    if S == 1024:
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).float()
        err = ((out.float() - ref).norm() / ref.norm()).item()
    t = lse.contiguous().view(torch.int64).view(B, H, S // 128, 64)[..., :10].reshape(-1, 10).cpu().tolist()
    blocks = []
    for r in t:
        gt0, gt6, c0, c1, c2, c3, c4, c5, c6, sm = r
        blocks.append(dict(gt0=gt0, gt6=gt6, c=[c0, c1, c2, c3, c4, c5, c6], sm=sm & 0xFFFF, tiles=sm >> 16))
    ns_per_cycle = st.median((b["gt6"] - b["gt0"]) / max(1, b["c"][6] - b["c"][0]) for b in blocks)
    us = lambda cyc: cyc * ns_per_cycle / 1000
    names = ["q_ready", "k0_ready", "s0", "loop", "last_pv", "finish", "total"]
    phases = {}
    for i, n in enumerate(names[:6]):
        vals = sorted(us(b["c"][i + 1] - b["c"][i]) for b in blocks)
        phases[n] = [round(vals[len(vals) // 10], 3), round(st.median(vals), 3), round(vals[9 * len(vals) // 10], 3)]
    tot = sorted(us(b["c"][6] - b["c"][0]) for b in blocks)
    phases["total"] = [round(tot[len(tot) // 10], 3), round(st.median(tot), 3), round(tot[9 * len(tot) // 10], 3)]
    per_tile = st.median(us(b["c"][4] - b["c"][3]) / max(1, b["tiles"] - 1) for b in blocks)
    by_sm = {}
    for b in blocks:
        by_sm.setdefault(b["sm"], []).append(b)
    gaps, counts = [], []
    for sm, bl in by_sm.items():
        bl.sort(key=lambda b: b["gt0"])
        counts.append(len(bl))
        gaps += [(bl[i + 1]["gt0"] - bl[i]["gt6"]) / 1000 for i in range(len(bl) - 1)]
    gaps.sort()
    first = min(b["gt0"] for b in blocks)
    last = max(b["gt6"] for b in blocks)
    starts = sorted((b["gt0"] - first) / 1000 for b in blocks)
    ends_per_sm = sorted((max(b["gt6"] for b in bl) - first) / 1000 for bl in by_sm.values())
    summary = dict(ms=ms, median_ms=times[len(times) // 2], rel_err=err, span_us=(last - first) / 1000, ns_per_cycle=ns_per_cycle, phases_us_p10_p50_p90=phases,
               loop_us_per_tile=per_tile, sms=len(by_sm), blocks_per_sm=[min(counts), max(counts)],
               gap_between_blocks_us_p10_p50_p90=[gaps[len(gaps) // 10], gaps[len(gaps) // 2], gaps[9 * len(gaps) // 10]],
               first_wave_start_spread_us=starts[131], sm_end_spread_us=[ends_per_sm[0], ends_per_sm[-1]])
    report[f"S{S}"] = summary
    print(f"S{S}:", json.dumps(summary), flush=True)
    with open(os.path.join(out_dir, f"trace_{os.environ.get('TAG', 'a')}_S{S}.json"), "w") as f:
        json.dump(blocks, f)
with open(os.path.join(out_dir, f"trace_summary_{os.environ.get('TAG', 'a')}.json"), "w") as f:
    json.dump(report, f, indent=1)
