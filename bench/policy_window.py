# Does an L2 access-policy window do for batch-1 decode's K and V what the evict-first load hint does
# (NOTES.md item 85)? A plain Triton read of the 134 MB of K and V of batch 1 x 32768 (item 62's
# reader), with and without the evict-first hint, under no window, a streaming window over K and V
# (one allocation, so one window spans both), over K alone, and over both with a hit ratio of 0.5;
# cuDNN's SDPA decode beside each. Windows are set on torch's stream (cuStreamSetAttribute), which
# do_bench and Triton launch on; its L2 flush writes outside them.
# Usage on the GPU machine: python3 bench/policy_window.py OUT.json
import ctypes, json, sys
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from triton.testing import do_bench
from kv_reader import D, kv_tensors, reader

R = {}
def rec(key, value):
    R[key] = value
    print(f"{key:70s} {value:12.1f}", flush=True)

cu = ctypes.CDLL("libcuda.so.1")
torch.zeros(1, device="cuda")
device, largest = ctypes.c_int(), ctypes.c_int()
cu.cuCtxGetDevice(ctypes.byref(device))
cu.cuDeviceGetAttribute(ctypes.byref(largest), 109, device)  # MAX_ACCESS_POLICY_WINDOW_SIZE
rec("max access policy window bytes", largest.value)

class Window(ctypes.Structure):  # CUaccessPolicyWindow, padded to CUlaunchAttributeValue's 64 bytes
    _fields_ = [("base", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hit_ratio", ctypes.c_float),
                ("hit_prop", ctypes.c_int), ("miss_prop", ctypes.c_int), ("pad", ctypes.c_char * 32)]
NORMAL, STREAMING = 0, 1
def set_window(base, num_bytes, hit_ratio=1.0):
    w = Window(base, num_bytes, hit_ratio, STREAMING if num_bytes else NORMAL, STREAMING if num_bytes else NORMAL)
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    rc = cu.cuStreamSetAttribute(stream, 1, ctypes.byref(w))  # CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW
    if rc: sys.exit(f"cuStreamSetAttribute: CUresult {rc}")

torch.manual_seed(0)
kv, k, v = kv_tensors()
N = k.numel()
nbytes = 2 * N * k.element_size()
out = torch.empty(4096, device="cuda", dtype=torch.float32)
q = torch.randn(1, 32, 1, D, device="cuda", dtype=torch.bfloat16)
kt, vt = k.transpose(1, 2), v.transpose(1, 2)
def gbs(ms): return nbytes / ms / 1e6

windows = {"nowin": (0, 0, 1.0), "win_all": (kv.data_ptr(), min(largest.value, nbytes), 1.0),
           "win_k": (kv.data_ptr(), nbytes // 2, 1.0), "win_all_hit0.5": (kv.data_ptr(), min(largest.value, nbytes), 0.5)}
for name, (base, size, hit) in windows.items():
    set_window(0, 0)
    if size: set_window(base, size, hit)
    for evict in ["", "evict_first"]:
        for G in [128, 528, 256]:
            BLOCK, W = 8192, 16
            f = reader(k, v, out, G, BLOCK, W, evict)
            f()
            torch.cuda.synchronize()
            rec(f"{name} G{G} B{BLOCK} w{W} {evict or 'normal'} GB/s", gbs(do_bench(f, return_mode="median")))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ms = do_bench(lambda: F.scaled_dot_product_attention(q, kt, vt, enable_gqa=True), return_mode="median")
    rec(f"{name} cudnn decode GB/s", gbs(ms))
set_window(0, 0)
json.dump(R, open(sys.argv[1], "w"), indent=1)
