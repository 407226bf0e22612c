"""RadixAttentionBlock (the bare radix tree over caller-owned page ids) against a brute-force model
over long random sequences of operations, its page owners, and RadixAttentionWithPagedKVCache (the
tree on a KVCacheManager): shared blocks, eviction, running out, and attention over shared pages."""

import logging

import numpy as np
import pytest

import yaie_kernels as yk
from conftest import attention_ref, randn

ROOT = "root"


class Model:
    """The tree at page granularity, by brute force: every cached page keyed by the tokens up to
    its end, with its page id, last access and lock count; node ends (where libyk's nodes end:
    inserts' ends and the splits matches and inserts make) with a node id. A node is the pages
    from the previous node end on its path to its own end. Eviction order: least recently used
    unlocked leaf (no two leaves share an access time: each call touches one path)."""

    def __init__(self, ps):
        self.ps = ps
        self.page, self.time, self.lock = {}, {}, {}  # prefix tuple -> page id / clock / locks
        self.ends = {}  # prefix tuple -> node id
        self.root_lock = 0
        self.clock = 0
        self.next_id = 0
        self.held = {}  # page id -> references, what the owner should see

    def _new_id(self):
        self.next_id += 1
        return self.next_id

    def longest(self, tokens):
        n, ps = 0, self.ps
        while n + ps <= len(tokens) and tuple(tokens[:n + ps]) in self.page:
            n += ps
        return n

    def _split(self, tokens, n):
        if n and tuple(tokens[:n]) not in self.ends:
            self.ends[tuple(tokens[:n])] = self._new_id()

    def _touch(self, tokens, n):
        self.clock += 1
        for m in range(self.ps, n + 1, self.ps):
            self.time[tuple(tokens[:m])] = self.clock

    def node_at(self, tokens, n):
        return self.ends[tuple(tokens[:n])] if n else ROOT

    def match(self, tokens):
        tokens = list(tokens)[:len(tokens) - len(tokens) % self.ps]
        n = self.longest(tokens)
        self._split(tokens, n)
        self._touch(tokens, n)
        return n, [self.page[tuple(tokens[:m])] for m in range(self.ps, n + 1, self.ps)], self.node_at(tokens, n)

    def insert(self, tokens, pages):
        tokens = list(tokens)[:len(tokens) - len(tokens) % self.ps]
        n = self.longest(tokens)
        self._split(tokens, n)
        dup = [pages[i] for i in range(n // self.ps) if pages[i] != self.page[tuple(tokens[:(i + 1) * self.ps])]]
        if n < len(tokens):
            for m in range(n + self.ps, len(tokens) + 1, self.ps):
                key = tuple(tokens[:m])
                self.page[key], self.lock[key] = pages[m // self.ps - 1], 0
                self.held[self.page[key]] = self.held.get(self.page[key], 0) + 1
            self.ends[tuple(tokens)] = self._new_id()
        self._touch(tokens, len(tokens))
        return n, len(tokens) - n, dup

    def _end_of(self, node):
        return next(e for e, i in self.ends.items() if i == node)

    def locks(self, node):
        return self.root_lock if node == ROOT else self.lock[self._end_of(node)]

    def valid(self, node):
        return node == ROOT or node in self.ends.values()

    def lock_path(self, node, step):
        self.root_lock += step
        if node != ROOT:
            end = self._end_of(node)
            for m in range(self.ps, len(end) + 1, self.ps):
                self.lock[end[:m]] += step

    def _start_of(self, end):
        starts = [len(e) for e in self.ends if len(e) < len(end) and end[:len(e)] == e]
        return max(starts, default=0)

    def evict(self, num_pages):
        freed = []
        while len(freed) < num_pages:
            leaves = [e for e in self.ends if self.lock[e] == 0 and not any(
                len(p) == len(e) + self.ps and p[:len(e)] == e for p in self.page)]
            if not leaves:
                break
            e = min(leaves, key=lambda x: self.time[x])
            for m in range(self._start_of(e) + self.ps, len(e) + 1, self.ps):
                key = e[:m]
                freed.append(self.page.pop(key))
                del self.time[key], self.lock[key]
                self.held[freed[-1]] -= 1
                if not self.held[freed[-1]]:
                    del self.held[freed[-1]]
            del self.ends[e]
        return freed

    def stats(self):
        locked = sum(1 for k in self.page if self.lock[k])
        return yk.RadixStats(len(self.page) * self.ps, len(self.page), len(self.page) - locked, locked, len(self.ends))


@pytest.mark.parametrize("ps", [1, 3, 4])
def test_radix_tree_against_a_brute_force_model(rng, ps):
    """A long random run of matches, inserts (new and repeated prefixes, reused page ids),
    locks, unlocks, stale handles and evictions; after every step the tree's answers, its
    statistics and the pages its owner holds equal the model's."""
    tree = yk.RadixAttentionBlock(ps)
    model = Model(ps)
    prompts = [list(rng.integers(0, 3, rng.integers(1, 5) * ps)) for _ in range(4)]  # shared heads
    handles = []  # (tree handle, model node) from matches
    locked = []
    next_page = 0
    for step in range(400):
        op = rng.choice(["insert", "insert", "match", "lock", "unlock", "evict", "order"])
        tokens = list(prompts[rng.integers(len(prompts))][:rng.integers(0, 4 * ps + 1)]) + list(
            rng.integers(0, 3, rng.integers(0, 3 * ps + 2)))
        if op == "insert":
            whole = len(tokens) // ps
            pages = list(range(next_page, next_page + whole + (len(tokens) % ps > 0)))
            next_page += len(pages)
            got = tree.insert(tokens, pages)
            cached, inserted, dup = model.insert(tokens, pages)
            assert (got.cached_tokens, got.inserted_tokens, got.duplicates.tolist()) == (cached, inserted, dup)
        elif op == "match":
            got = tree.match_prefix(tokens)
            assert tree.prefix_length(tokens) == got.length
            n, pages, node = model.match(tokens)
            assert (got.length, got.pages.tolist()) == (n, pages)
            handles.append((got.node, node))
        elif op == "lock" and handles:
            h, node = handles[rng.integers(len(handles))]
            if model.valid(node):
                tree.lock(h)
                model.lock_path(node, 1)
                locked.append((h, node))
            else:
                with pytest.raises(yk.InvalidArgumentError, match="is not in the tree: evicted, or from another tree"):
                    tree.lock(h)
        elif op == "unlock":
            if locked and rng.random() < 0.8:
                h, node = locked.pop(rng.integers(len(locked)))
                tree.unlock(h)
                model.lock_path(node, -1)
            elif handles:
                h, node = handles[rng.integers(len(handles))]
                if model.valid(node) and model.locks(node) == 0:
                    with pytest.raises(yk.InvalidArgumentError, match="is not locked"):
                        tree.unlock(h)
        elif op == "evict":
            n = int(rng.integers(0, 6))
            freed = tree.evict(n)
            assert freed.dtype == np.int32 and freed.tolist() == model.evict(n)
        elif op == "order":
            requests = [tokens, prompts[0], [], prompts[1][:ps]]
            order, matched = tree.order_by_prefix(requests)
            lengths = [model.longest(list(r)[:len(r) - len(r) % ps]) for r in requests]
            assert matched.tolist() == lengths
            assert order.tolist() == sorted(range(4), key=lambda i: (-lengths[i], i))
        assert tree.stats() == model.stats(), f"step {step} ({op})"
        assert tree.owner.held == model.held, f"step {step} ({op})"
    held, before = sorted(tree.owner.held), len(tree.owner.freed)
    tree.close()  # every cached page goes back to the owner
    assert tree.owner.held == {} and sorted(tree.owner.freed[before:]) == held


def test_match_insert_lock_evict_by_hand():
    tree = yk.RadixAttentionBlock(2)
    assert tree.match_prefix([1, 2, 3]).length == 0
    r = tree.insert([1, 2, 3, 4, 5], [10, 11, 12])  # the partial last page (5) is not cached
    assert (r.cached_tokens, r.inserted_tokens, r.duplicates.tolist()) == (0, 4, [])
    assert tree.owner.held == {10: 1, 11: 1}
    m = tree.match_prefix([1, 2, 3, 9, 9])  # ends inside the node: split on the page boundary
    assert (m.length, m.pages.tolist()) == (2, [10])
    assert tree.stats() == yk.RadixStats(4, 2, 2, 0, 2)
    r = tree.insert([1, 2, 7, 7], [20, 21])  # the first page is cached as 10: 20 is a duplicate
    assert (r.cached_tokens, r.inserted_tokens, r.duplicates.tolist()) == (2, 2, [20])
    assert 20 not in tree.owner.held and tree.owner.held[21] == 1
    tree.lock(m.node)
    assert tree.stats().locked_pages == 1
    # [1, 2, 3, 4] was touched before [1, 2, 7, 7]: its leaf goes first; [1, 2] is locked
    assert tree.evict(1).tolist() == [11]
    assert tree.evict(10).tolist() == [21]
    assert tree.stats() == yk.RadixStats(2, 1, 0, 1, 1)
    tree.unlock(m.node)
    with pytest.raises(yk.InvalidArgumentError, match=r"RadixAttentionBlock.unlock: radix unlock: node \d+ is not "
                                                      r"locked \[YK_ERR_INVALID_ARGUMENT\]"):
        tree.unlock(m.node)
    assert tree.evict(1).tolist() == [10] and tree.owner.take_freed() == [11, 21, 10] and tree.owner.freed == []
    with pytest.raises(yk.InvalidArgumentError, match="is not in the tree: evicted"):
        tree.lock(m.node)


def test_radix_bad_input():
    tree = yk.RadixAttentionBlock(2)
    with pytest.raises(ValueError, match="5 tokens in pages of 2 need 2 page ids, got 1"):
        tree.insert([1, 2, 3, 4, 5], [7])
    with pytest.raises(ValueError, match="5 tokens in pages of 2 need 2 page ids, got 4"):
        tree.insert([1, 2, 3, 4, 5], [7, 8, 9, 10])
    with pytest.raises(yk.InvalidArgumentError, match=r"radix insert: pages\[1\] is -1"):
        tree.insert([1, 2, 3, 4], [7, -1])
    with pytest.raises(ValueError, match="tokens must have 1 dimension"):
        tree.match_prefix([[1, 2]])
    with pytest.raises(ValueError, match="tokens holds 4294967296, outside int32"):
        tree.match_prefix([1, 1 << 32])
    with pytest.raises(ValueError, match="tokens must hold integers"):
        tree.match_prefix([1.5])
    with pytest.raises(ValueError, match="node must be a RadixNodeHandle"):
        tree.lock("root")
    with pytest.raises(ValueError, match="num_pages is -1, which is negative"):
        tree.evict(-1)
    assert tree.stats() == yk.RadixStats(0, 0, 0, 0, 0)
    with pytest.raises(yk.InvalidArgumentError, match="radix create: page_size 200 is outside 1..128"):
        yk.RadixAttentionBlock(200)
    with pytest.raises(TypeError, match="owner must have retain"):
        yk.RadixAttentionBlock(1, owner=object())
    tree.close()
    with pytest.raises(ValueError, match="RadixAttentionBlock.stats: the tree is closed"):
        tree.stats()


class Allocator:
    """A caller's owner with a budget: refuses to hold more than `room` pages."""

    def __init__(self, room):
        self.room, self.refs = room, {}

    def retain(self, pages):
        if len(self.refs) + len(pages) > self.room:
            raise MemoryError(f"no room for {len(pages)} pages")
        for p in pages.tolist():
            self.refs[p] = self.refs.get(p, 0) + 1

    def release(self, pages):
        for p in pages.tolist():
            self.refs[p] -= 1
            if not self.refs[p]:
                del self.refs[p]


def test_custom_owner_refusing_leaves_the_tree_unchanged():
    owner = Allocator(3)
    tree = yk.RadixAttentionBlock(1, owner=owner)
    tree.insert([1, 2, 3], [0, 1, 2])
    before = tree.stats()
    with pytest.raises(MemoryError, match="no room for 2 pages"):
        tree.insert([1, 2, 4, 5], [0, 1, 3, 4])  # the shared head splits; the refusal undoes nothing visible
    assert tree.stats() == before and owner.refs == {0: 1, 1: 1, 2: 1}
    assert tree.match_prefix([1, 2, 4, 5]).length == 2
    tree.evict(1)
    assert owner.refs == {0: 1, 1: 1}
    del tree  # dropping the object destroys the tree: its pages go back at once
    assert owner.refs == {}


def test_owner_release_errors_are_logged(caplog):
    class Grumpy(yk.RadixPageOwner):
        def release(self, pages):
            super().release(pages)
            raise RuntimeError("nope")

    tree = yk.RadixAttentionBlock(1, owner=Grumpy())
    tree.insert([1, 2], [5, 6])
    with caplog.at_level(logging.ERROR, logger="yaie_kernels"):
        assert tree.evict(1).tolist() == [5, 6]
    assert "the page owner's release([5, 6]) raised" in caplog.text
    assert tree.stats().cached_pages == 0 and tree.owner.freed == [5, 6]


# ---- the prefix cache on a KVCacheManager ----

BS, HEADS, DIM = 4, 2, 8


@pytest.fixture
def pc():
    with yk.KVCacheManager(10, BS, HEADS, DIM, "float16", num_layers=2, device="cpu") as m:
        with yk.RadixAttentionWithPagedKVCache(m) as p:
            yield p


def free(pc):
    return pc.kv_cache.info().free_blocks


def test_requests_share_cached_blocks(pc):
    m = pc.kv_cache
    prompt = list(range(100, 110))  # 10 tokens: 2 whole blocks and a half
    seq, cached = pc.start(prompt)
    assert cached == 0 and free(pc) == 10
    slots = pc.append(seq, len(prompt))
    assert free(pc) == 7 and slots.tolist() == [m.seq_info(seq).block_table[t // BS] * BS + t % BS for t in range(10)]
    first_blocks = m.seq_info(seq).block_table[:2].tolist()
    pc.finish(seq, prompt)
    s = pc.stats()
    assert (s.cached_blocks, s.evictable_blocks, s.locked_blocks, s.requests) == (2, 2, 0, 0)
    assert free(pc) == 8  # the partial third block went back; the tree holds two
    with pytest.raises(yk.NotFoundError):
        m.seq_info(seq)
    # two requests with the same head: both start from the cached blocks, by reference
    a, ca = pc.start(prompt + [1, 2, 3])
    b, cb = pc.start(prompt[:9] + [7])
    assert (ca, cb) == (8, 8) and free(pc) == 8
    assert m.seq_info(a).block_table.tolist() == m.seq_info(b).block_table.tolist() == first_blocks
    s = pc.stats()
    assert (s.locked_blocks, s.evictable_blocks, s.requests, s.requested_tokens, s.hit_tokens) == (2, 0, 2, 33, 16)
    pc.append(a, 5)  # tokens 8..12: two new blocks of its own
    pc.append(b, 2)
    assert free(pc) == 5
    assert m.seq_info(a).block_table[:2].tolist() == first_blocks
    assert pc.prefix_length(prompt + [5]) == 8
    order, matched = pc.order_by_prefix([[1, 2, 3, 4], prompt, prompt[:5]])
    assert order.tolist() == [1, 2, 0] and matched.tolist() == [0, 8, 4]
    pc.finish(a, prompt + [1, 2, 3])  # 13 tokens: its third block joins the tree too
    pc.finish(b)  # dropped: caches nothing
    s = pc.stats()
    assert (s.cached_blocks, s.requests, s.locked_blocks) == (3, 0, 0) and free(pc) == 7


def test_cached_blocks_hold_the_first_requests_kv(pc, rng):
    """What one request wrote is what the next reads through its shared blocks, and paged
    attention over the second request's table equals dense attention over both writers' tokens."""
    m = pc.kv_cache
    prompt = list(range(12))
    seq, _ = pc.start(prompt)
    slots = pc.append(seq, 12)
    k, v = (np.from_dlpack(t) for t in m.layer(1))
    kv = randn(rng, (2, 12, HEADS, DIM), np.float16)
    k[slots // BS, slots % BS], v[slots // BS, slots % BS] = kv[0], kv[1]
    pc.finish(seq, prompt)
    seq2, cached = pc.start(prompt[:8] + [50, 51])
    assert cached == 8
    new = pc.append(seq2, 2)
    more = randn(rng, (2, 2, HEADS, DIM), np.float16)
    m.copy_blocks()
    k[new // BS, new % BS], v[new // BS, new % BS] = more[0], more[1]
    bt, cl = m.block_tables([seq2])
    assert cl.tolist() == [10]
    q = randn(rng, (1, 4, DIM), np.float16)
    out = yk.paged_attention_forward(q, *m.layer(1), bt, cl, 10)
    keys = np.concatenate([kv[0, :8], more[0]]).transpose(1, 0, 2)
    values = np.concatenate([kv[1, :8], more[1]]).transpose(1, 0, 2)
    want, _, _ = attention_ref(q[0][:, None], keys, values, False)
    np.testing.assert_allclose(out[0].astype(np.float64), want[:, 0], atol=4e-3)


def test_eviction_frees_least_recently_used_blocks(pc):
    old, new = list(range(8)), list(range(50, 58))
    for prompt in (old, new):
        s, _ = pc.start(prompt)
        pc.append(s, 8)
        pc.finish(s, prompt)
    assert free(pc) == 6 and pc.stats().cached_blocks == 4
    pc.start(new[:4])  # touches `new`: `old` is now the least recently used
    s, _ = pc.start([9] * 28)
    pc.append(s, 28)  # 7 blocks: 6 free and one evicted, from `old`
    st = pc.stats()
    assert (st.evicted_blocks, st.cached_blocks, free(pc)) == (2, 2, 1)  # a whole node: both of old's blocks
    assert pc.prefix_length(old) == 0 and pc.prefix_length(new) == 8
    pc.reserve(1)  # there is one free already
    assert pc.stats().evicted_blocks == 2


def test_running_out_raises_and_changes_nothing(pc):
    m = pc.kv_cache
    prompt = list(range(8))
    s, _ = pc.start(prompt)
    pc.append(s, 8)
    pc.finish(s, prompt)
    holder, cached = pc.start(prompt)  # locks the two cached blocks
    assert cached == 8
    r, _ = pc.start([1])
    pc.append(r, 4 * BS)  # 4 of the 8 free blocks
    stats, info, table = pc.stats(), m.info(), m.seq_info(r).block_table.tolist()
    out = np.full(5 * BS, -1, np.int64)
    with pytest.raises(yk.OutOfMemoryError) as e:
        pc.append(r, 5 * BS, out=out)  # 5 blocks, 4 free, the cached ones locked
    assert isinstance(e.value, MemoryError) and e.value.status == "YK_ERR_OUT_OF_MEMORY"
    assert ("RadixAttentionWithPagedKVCache.append: yk_prefix_cache_append: 5 free blocks needed, 4 are free, and "
            "evicting every unlocked cached block would free at most 0 more") in str(e.value)
    assert pc.stats() == stats and m.info() == info and m.seq_info(r).block_table.tolist() == table
    assert (out == -1).all()
    with pytest.raises(yk.OutOfMemoryError, match="7 free blocks needed, 4 are free"):
        pc.reserve(7)
    assert pc.stats() == stats
    pc.finish(holder)  # unlocked: now the cached blocks can go
    pc.append(r, 5 * BS)
    assert pc.stats().evicted_blocks == 1 * 2 and free(pc) == 1


def test_prefix_cache_bad_input(pc):
    s, _ = pc.start([1, 2, 3])
    pc.append(s, 3)
    with pytest.raises(yk.InvalidArgumentError, match=r"yk_prefix_cache_finish: n is 5; sequence \d+ holds 3 tokens"):
        pc.finish(s, [1, 2, 3, 4, 5])
    with pytest.raises(yk.InvalidArgumentError, match="free_blocks 11 is not in 0..10"):
        pc.reserve(11)
    with pytest.raises(ValueError, match="tokens must have 1 dimension"):
        pc.start([[1, 2]])
    assert pc.stats().requests == 1
    pc.finish(s)
    for call in (lambda: pc.append(s, 1), lambda: pc.finish(s), lambda: pc.insert(s, [1])):
        with pytest.raises(yk.NotFoundError, match="was freed"):
            call()
    with pytest.raises(TypeError, match="kv_cache must be a KVCacheManager"):
        yk.RadixAttentionWithPagedKVCache(object())


def test_insert_while_running_shares_before_finish(pc):
    prompt = list(range(20, 32))
    s, _ = pc.start(prompt)
    pc.append(s, 12)
    pc.insert(s, prompt)  # a long prefill's pages become shareable now
    st = pc.stats()
    assert (st.cached_blocks, st.locked_blocks, st.requests) == (3, 3, 1)
    other, cached = pc.start(prompt + [1])
    assert cached == 12
    assert pc.kv_cache.seq_info(other).block_table.tolist() == pc.kv_cache.seq_info(s).block_table.tolist()
    pc.finish(s, prompt)
    pc.finish(other, prompt)
    assert pc.stats().locked_blocks == 0 and free(pc) == 7


def test_concurrent_duplicates_switch_to_the_trees_blocks(pc):
    """Two requests with one prompt run at once (nothing cached when both start): the second to
    insert finds the first's pages cached, its table switches to them and its own copies are
    freed, counted in duplicate_blocks (the stats' last field, so also a check that the whole C
    struct is read)."""
    m = pc.kv_cache
    prompt = list(range(200, 209))  # 9 tokens: 2 whole blocks and one token
    a, _ = pc.start(prompt)
    b, _ = pc.start(prompt)
    pc.append(a, 9)
    pc.append(b, 9)
    a_blocks, b_blocks = m.seq_info(a).block_table.tolist(), m.seq_info(b).block_table.tolist()
    assert free(pc) == 4 and not set(a_blocks) & set(b_blocks)
    pc.finish(a, prompt)
    assert free(pc) == 5 and pc.stats().duplicate_blocks == 0
    pc.insert(b, prompt)
    assert m.seq_info(b).block_table.tolist() == a_blocks[:2] + b_blocks[2:]
    s = pc.stats()
    assert (s.duplicate_blocks, s.cached_blocks, s.locked_blocks, s.requests) == (2, 2, 2, 1)
    assert free(pc) == 7  # b's own copies of the two cached pages
    pc.finish(b, prompt)  # already switched: no new duplicates
    s = pc.stats()
    assert (s.duplicate_blocks, s.cached_blocks, s.locked_blocks, s.requests) == (2, 2, 0, 0) and free(pc) == 8


def test_closing_the_manager_first_keeps_the_cache_alive():
    m = yk.KVCacheManager(4, BS, HEADS, DIM, device="cpu")
    p = yk.RadixAttentionWithPagedKVCache(m)
    s, _ = p.start([1, 2, 3, 4])
    p.append(s, 4)
    m.close()
    with pytest.raises(ValueError, match="its KVCacheManager is closed"):
        p.append(s, 1)
    p.close()  # destroys the prefix cache, then the cache it kept alive
    with pytest.raises(ValueError, match="the prefix cache is closed"):
        p.stats()
