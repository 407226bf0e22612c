"""The engine's names and signatures, finding the library, errors and threads."""

import inspect
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import yaie_kernels as yk
from conftest import randn, rms_norm_ref

# kernels-guide.txt: name -> the parameters the engine passes, with their defaults
ENGINE_FUNCTIONS = {
    "flash_attention_forward": [("q",), ("k",), ("v",), ("causal_mask", None)],
    "flash_attention_backward": [("dout",), ("q",), ("k",), ("v",), ("output",)],
    "paged_attention_forward": [("q",), ("k_cache",), ("v_cache",), ("block_tables",), ("context_lens",),
                                ("max_context_len",)],
    "apply_rope_qk": [("q",), ("k",), ("cos",), ("sin",), ("position_ids",)],
    "rms_norm": [("input_tensor",), ("weight",), ("epsilon", 1e-6)],
    "silu_and_mul": [("input_tensor",)],
    "memory_pool_allocate": [("size",)],
    "memory_pool_free": [("ptr",)],
    "cpu_attention_forward": [("q",), ("k",), ("v",), ("mask", None)],
    "cpu_rms_norm": [("input_tensor",), ("weight",), ("epsilon", 1e-6)],
    "cpu_rope_embeddings": [("input_tensor",), ("cos",), ("sin",), ("position_ids",)],
}
ENGINE_CLASSES = ["KVCacheBlock", "KVCacheManager", "RadixAttentionBlock", "RadixAttentionWithPagedKVCache",
                  "FlashInferAttention", "FlashInferPagedAttention"]


@pytest.mark.parametrize("name", sorted(ENGINE_FUNCTIONS))
def test_engine_function_signature(name):
    """The engine's positional parameters, in order, with its defaults; anything added is keyword-only."""
    params = list(inspect.signature(getattr(yk, name)).parameters.values())
    positional = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == [e[0] for e in ENGINE_FUNCTIONS[name]]
    for p, e in zip(positional, ENGINE_FUNCTIONS[name]):
        if len(e) == 2:
            assert p.default == e[1], p.name
        else:
            assert p.default is inspect.Parameter.empty, p.name
    assert all(p.kind == p.KEYWORD_ONLY for p in params if p not in positional)


def test_engine_classes_exist():
    for name in ENGINE_CLASSES:
        assert inspect.isclass(getattr(yk, name)), name
    for method in ("swap_blocks_to_cpu", "swap_blocks_from_cpu"):
        params = list(inspect.signature(getattr(yk.KVCacheManager, method)).parameters.values())
        assert [p.name for p in params[:2]] == ["self", "block_ids"]
        assert all(p.kind == p.KEYWORD_ONLY for p in params[2:]), method


def test_kv_cache_manager_takes_the_engines_arguments():
    """The YAIE engine's kv_cache.py constructs KVCacheManager(num_blocks, block_size, num_heads,
    head_dim, dtype=float16); the rest (layers, layout, device, pool, ...) is keyword-only."""
    params = list(inspect.signature(yk.KVCacheManager).parameters.values())
    positional = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == ["num_blocks", "block_size", "num_heads", "head_dim", "dtype"]
    assert positional[-1].default == "float16"
    assert all(p.kind == p.KEYWORD_ONLY for p in params if p not in positional)


def test_paged_and_radix_names_take_the_documented_arguments():
    """FlashInfer's wrapper shape: heads, head_dim and page size positional, the rest keyword-only;
    plan's tables then run's query and cache; vLLM's copy_blocks and append_kv's positional
    (k, v, caches, slots) order."""
    params = list(inspect.signature(yk.FlashInferPagedAttention).parameters.values())
    positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == ["num_qo_heads", "num_kv_heads", "head_dim", "page_size"]
    plan = list(inspect.signature(yk.FlashInferPagedAttention.plan).parameters)
    assert plan[:4] == ["self", "kv_indptr", "kv_indices", "kv_last_page_len"]
    assert list(inspect.signature(yk.FlashInferPagedAttention.run).parameters)[:3] == ["self", "q", "paged_kv_cache"]
    assert list(inspect.signature(yk.copy_blocks).parameters) == ["key_caches", "value_caches", "block_mapping"]
    append = inspect.signature(yk.append_kv).parameters
    assert [p.name for p in append.values() if p.kind == p.POSITIONAL_OR_KEYWORD] == [
        "k", "v", "k_cache", "v_cache", "slot_mapping"]
    assert list(inspect.signature(yk.KVCacheManager.copy_blocks).parameters)[:3] == ["self", "src_block_ids",
                                                                                     "dst_block_ids"]


def test_library_is_found_and_reports_its_version():
    assert yk.library_path()
    assert yk.library_version().count(".") == 2


def _fresh_python(code, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=60)


def test_missing_library_says_where_it_looked(tmp_path):
    missing = str(tmp_path / "nowhere" / "libyk.so")
    r = _fresh_python("import numpy as np, yaie_kernels as yk\n"
                      "try:\n    yk.rms_norm(np.ones((1, 4), np.float32), np.ones(4, np.float32))\n"
                      "except ImportError as e:\n    print(type(e).__name__, e)\n", YK_LIBRARY=missing)
    assert r.returncode == 0, r.stderr
    assert "LibraryNotFoundError" in r.stdout and "YK_LIBRARY" in r.stdout and missing in r.stdout


def test_import_needs_no_library():
    """Importing (every exported name) touches no library; the first call that needs it says so."""
    r = _fresh_python("import numpy as np, yaie_kernels as yk\n"
                      "assert all(hasattr(yk, n) for n in yk.__all__)\n"
                      "yk.RadixPageOwner()\n"
                      "try:\n    yk.RadixAttentionBlock(16)\n"
                      "except ImportError as e:\n    print(type(e).__name__)\n",
                      YK_LIBRARY="/nonexistent/libyk.so")
    assert r.returncode == 0 and r.stdout.strip() == "LibraryNotFoundError", r.stderr


def test_one_context_shared_by_threads(rng, monkeypatch):
    """Threads race to the first call and then run concurrently: every result is right and the host
    context is created once."""
    from yaie_kernels import _lib
    created = []
    real_create = _lib._create_context
    monkeypatch.setattr(_lib, "_create_context", lambda key: created.append(key) or real_create(key))
    saved = dict(_lib._contexts)
    _lib._contexts.clear()  # as on first use (the old contexts are put back below, and stay alive)
    inputs = [(randn(rng, (16, 128)), randn(rng, (128,))) for _ in range(8)]
    results, errors = [None] * 8, []
    start = threading.Barrier(8)

    def work(i):
        try:
            start.wait()
            x, w = inputs[i]
            for _ in range(50):
                results[i] = yk.rms_norm(x, w)
            # a failure in one thread leaves its own message, whatever the others do
            try:
                yk.rms_norm(x, w[:i + 1])
            except ValueError as e:
                assert f"weight has {i + 1} elements" in str(e)
            else:
                raise AssertionError("no error")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _lib._contexts.update(saved)
    assert not errors, errors
    for (x, w), y in zip(inputs, results):
        np.testing.assert_allclose(y, rms_norm_ref(x, w), atol=1e-5)
    assert created == [-1]


def test_every_copied_struct_is_checked_against_the_library():
    """Each ctypes copy of a yk_ struct is registered, and the loaded libyk agrees on its size."""
    import ctypes
    import importlib
    import pkgutil

    from yaie_kernels import _lib

    _lib.load()
    registered = {cls for cls, _ in _lib._LAYOUTS}
    dlpack_structs = {"_Legacy", "_Versioned", "_DLDevice", "_DLDataType", "DLTensor"}  # DLPack's, not ours
    for info in pkgutil.iter_modules(yk.__path__):
        module = importlib.import_module(f"yaie_kernels.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, ctypes.Structure) and obj.__module__ == module.__name__
                    and obj.__name__ not in dlpack_structs):
                assert obj in registered, f"{module.__name__}.{obj.__name__} copies a C struct without @c_struct"
    assert len(registered) >= 17
    for cls, name in _lib._LAYOUTS:
        assert ctypes.sizeof(cls) == _lib.C.yk_struct_size(name.encode()), name


def test_a_struct_that_differs_from_the_library_is_refused():
    import ctypes

    from yaie_kernels import _lib

    _lib.load()

    class Short(ctypes.Structure):  # yk_prefix_cache_stats before duplicate_blocks: one field short
        _fields_ = [(f"f{i}", ctypes.c_int64) for i in range(11)]

    with pytest.raises(yk.LibraryNotFoundError, match=r"yk_prefix_cache_stats: 88 bytes here, 96 in libyk"):
        _lib.check_layouts([(Short, "yk_prefix_cache_stats")])
    with pytest.raises(yk.LibraryNotFoundError, match="yk_no_such_struct: not in libyk"):
        _lib.check_layouts([(Short, "yk_no_such_struct")])
    # registering once the library is loaded checks at once
    with pytest.raises(yk.LibraryNotFoundError, match="yk_radix_node"):
        _lib.c_struct("yk_radix_node")(Short)
    assert all(cls is not Short for cls, _ in _lib._LAYOUTS)
