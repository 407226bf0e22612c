#!/usr/bin/env python3
"""Scans the cubins of a kernel cache for memory instructions whose descriptor (desc[URn], the
cache policy of an L2-hinted load) lies in uniform registers the kernel never writes: CUDA 13's
ptxas emits such loads for some evict-first cp.async forms, and the GPU then runs an illegal
instruction (gen/ops/attention_decode.c, evict_first_miscompiles). No GPU is needed.

    YK_CACHE_DIR=/tmp/scan build/yk warm --arch sm_90 --ops attention_decode
    python3 bench/sass_scan.py /tmp/scan --yk build/yk

cuobjdump and nvdisasm: the CUDA toolkit's, or PyPI's wheels (nvidia-cuda-cuobjdump,
nvidia-cuda-nvdisasm: their nvidia/cu13/bin); give their folder with --tools or put it on PATH.
Exits 1 if any kernel reads such a register."""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile

WRITE = re.compile(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)\s+(UR\d+)")
DESC = re.compile(r"desc\[(UR\d+)\]")


def unset_descriptors(sass):
    """The desc[URn] registers of the listing that no instruction writes (n and n + 1 a pair)."""
    written = set()
    for line in sass.splitlines():
        m = WRITE.search(line)
        if m:
            n = int(m.group(2)[2:])
            written.add(n)
            if ".64" in m.group(1):
                written.add(n + 1)
    missing = set()
    for line in sass.splitlines():
        for reg in DESC.findall(line):
            n = int(reg[2:])
            if n not in written or n + 1 not in written:
                missing.add(reg)
    return sorted(missing)


def spec_names(yk, cache):
    """Key prefix -> spec, from yk cache ls."""
    if not yk:
        return {}
    env = dict(os.environ, YK_CACHE_DIR=cache)
    out = subprocess.run([yk, "cache", "ls"], capture_output=True, text=True, env=env).stdout
    return {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:] if line.split()}


def scan_entry(path, tmp, env):
    """The unset descriptor registers of one cache entry's cubin ([] for PTX only)."""
    data = open(path, "rb").read()
    at = data.find(b"\x7fELF")
    if at < 0:
        return []
    cubin = os.path.join(tmp, os.path.basename(path) + ".cubin")
    with open(cubin, "wb") as f:
        f.write(data[at:])
    run = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True, env=env)
    os.unlink(cubin)
    if run.returncode:
        raise RuntimeError(f"cuobjdump failed on {path}: {run.stderr.strip()}")
    return unset_descriptors(run.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", help="a kernel cache directory (YK_CACHE_DIR)")
    ap.add_argument("--yk", help="the yk binary, to name each entry's spec")
    ap.add_argument("--tools", help="the folder of cuobjdump and nvdisasm")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 1, help="entries disassembled at once")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.tools:
        env["PATH"] = args.tools + os.pathsep + env.get("PATH", "")
    names = spec_names(args.yk, args.cache)
    entries = sorted(f for f in os.listdir(args.cache) if f.endswith(".ykc"))
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(args.j) as pool:
        found = pool.map(lambda e: scan_entry(os.path.join(args.cache, e), tmp, env), entries)
        bad = 0
        for entry, missing in zip(entries, found):
            if missing:
                bad += 1
                print(f"unset {','.join(missing)}: {names.get(entry[:12], entry)}")
    print(f"{len(entries)} entries, {bad} reading unset descriptor registers")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
