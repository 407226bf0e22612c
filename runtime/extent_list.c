#include "runtime/extent_list.h"

#include <stdlib.h>
#include <string.h>

#define NONE (-1)

static uint32_t slot_of(const yk_extent_list *l, uint64_t offset) {
  /* Offsets are multiples of the pool's alignment: drop the zero bits, then Fibonacci hashing. */
  return (uint32_t)(((offset >> 8) * 0x9e3779b97f4a7c15ull) >> 32) & l->slot_mask;
}

static int grow_slots(yk_extent_list *l) {
  const uint32_t capacity = (l->slot_mask + 1) * 2;
  int32_t *slots = malloc((size_t)capacity * sizeof *slots);
  if (!slots) return 1;
  memset(slots, 0xff, (size_t)capacity * sizeof *slots);
  int32_t *old = l->slots;
  const uint32_t old_capacity = l->slot_mask + 1;
  l->slots = slots;
  l->slot_mask = capacity - 1;
  for (uint32_t i = 0; i < old_capacity; i++) {
    if (old[i] == NONE) continue;
    uint32_t s = slot_of(l, l->nodes[old[i]].offset);
    while (slots[s] != NONE) s = (s + 1) & l->slot_mask;
    slots[s] = old[i];
  }
  free(old);
  return 0;
}

static uint32_t find_slot(const yk_extent_list *l, uint64_t offset) {
  for (uint32_t s = slot_of(l, offset);; s = (s + 1) & l->slot_mask) {
    if (l->slots[s] == NONE || l->nodes[l->slots[s]].offset == offset) return s;
  }
}

/* Linear probing with backward-shift deletion: no tombstones, so lookups stay short however many
 * allocations come and go. */
static void remove_slot(yk_extent_list *l, uint32_t hole) {
  l->slots[hole] = NONE;
  for (uint32_t s = (hole + 1) & l->slot_mask; l->slots[s] != NONE; s = (s + 1) & l->slot_mask) {
    const uint32_t home = slot_of(l, l->nodes[l->slots[s]].offset);
    /* The entry at s may move to the hole unless its home lies cyclically in (hole, s]. */
    const int stays = hole <= s ? (home > hole && home <= s) : (home > hole || home <= s);
    if (stays) continue;
    l->slots[hole] = l->slots[s];
    l->slots[s] = NONE;
    hole = s;
  }
  l->slots_used--;
}

static int reserve_node(yk_extent_list *l) {
  if (l->spare != NONE || l->node_count < l->node_capacity) return 0;
  const int32_t capacity = l->node_capacity ? l->node_capacity * 2 : 64;
  yk_extent *nodes = realloc(l->nodes, (size_t)capacity * sizeof *nodes);
  if (!nodes) return 1;
  l->nodes = nodes;
  l->node_capacity = capacity;
  return 0;
}

static int32_t take_node(yk_extent_list *l) { /* after reserve_node */
  if (l->spare == NONE) return l->node_count++;
  const int32_t n = l->spare;
  l->spare = l->nodes[n].next;
  return n;
}

static void recycle_node(yk_extent_list *l, int32_t n) {
  l->nodes[n].next = l->spare;
  l->spare = n;
}

static void free_list_push(yk_extent_list *l, int32_t n) {
  yk_extent *e = &l->nodes[n];
  e->is_free = 1;
  e->free_prev = NONE;
  e->free_next = l->free_head;
  if (l->free_head != NONE) l->nodes[l->free_head].free_prev = n;
  l->free_head = n;
}

static void free_list_remove(yk_extent_list *l, int32_t n) {
  yk_extent *e = &l->nodes[n];
  if (e->free_prev != NONE)
    l->nodes[e->free_prev].free_next = e->free_next;
  else
    l->free_head = e->free_next;
  if (e->free_next != NONE) l->nodes[e->free_next].free_prev = e->free_prev;
  e->is_free = 0;
}

int yk_extent_list_init(yk_extent_list *l, uint64_t total) {
  memset(l, 0, sizeof *l);
  l->spare = l->free_head = NONE;
  l->total = total;
  l->slot_mask = 63;
  if (!(l->slots = malloc(64 * sizeof *l->slots))) return YK_EXTENT_NO_HOST_MEMORY;
  memset(l->slots, 0xff, 64 * sizeof *l->slots);
  if (reserve_node(l)) {
    free(l->slots);
    return YK_EXTENT_NO_HOST_MEMORY;
  }
  const int32_t n = take_node(l);
  l->nodes[n] = (yk_extent){0, total, NONE, NONE, NONE, NONE, 0};
  free_list_push(l, n);
  return YK_EXTENT_OK;
}

void yk_extent_list_destroy(yk_extent_list *l) {
  free(l->nodes);
  free(l->slots);
  memset(l, 0, sizeof *l);
}

int yk_extent_alloc(yk_extent_list *l, uint64_t size, uint64_t *offset) {
  int32_t best = NONE;
  for (int32_t n = l->free_head; n != NONE; n = l->nodes[n].free_next) {
    const yk_extent *e = &l->nodes[n];
    if (e->size < size) continue;
    if (best == NONE || e->size < l->nodes[best].size ||
        (e->size == l->nodes[best].size && e->offset < l->nodes[best].offset))
      best = n;
  }
  if (best == NONE) return YK_EXTENT_NO_ROOM;
  /* Everything that can fail comes first, so a failure leaves the list as it was. */
  const int split = l->nodes[best].size > size;
  if ((split && reserve_node(l)) || ((l->slots_used + 1) * 2 > l->slot_mask + 1 && grow_slots(l)))
    return YK_EXTENT_NO_HOST_MEMORY;

  free_list_remove(l, best);
  if (split) {
    const int32_t rest = take_node(l);
    yk_extent *e = &l->nodes[best]; /* after take_node: the array does not move, it was reserved */
    l->nodes[rest] = (yk_extent){e->offset + size, e->size - size, best, e->next, NONE, NONE, 0};
    if (e->next != NONE) l->nodes[e->next].prev = rest;
    e->next = rest;
    e->size = size;
    free_list_push(l, rest);
  }
  const uint32_t s = find_slot(l, l->nodes[best].offset);
  l->slots[s] = best;
  l->slots_used++;
  l->used_bytes += size;
  if (l->used_bytes > l->high_water_bytes) l->high_water_bytes = l->used_bytes;
  l->live++;
  *offset = l->nodes[best].offset;
  return YK_EXTENT_OK;
}

/* Folds the free extent b into a, its free neighbour just below it. */
static void merge_into(yk_extent_list *l, int32_t a, int32_t b) {
  yk_extent *ea = &l->nodes[a], *eb = &l->nodes[b];
  free_list_remove(l, b);
  ea->size += eb->size;
  ea->next = eb->next;
  if (eb->next != NONE) l->nodes[eb->next].prev = a;
  recycle_node(l, b);
}

int yk_extent_free(yk_extent_list *l, uint64_t offset) {
  const uint32_t s = find_slot(l, offset);
  const int32_t n = l->slots[s];
  if (n == NONE) return YK_EXTENT_NOT_ALLOCATED;
  remove_slot(l, s);
  l->used_bytes -= l->nodes[n].size;
  l->live--;
  free_list_push(l, n);
  const int32_t next = l->nodes[n].next, prev = l->nodes[n].prev;
  if (next != NONE && l->nodes[next].is_free) merge_into(l, n, next);
  if (prev != NONE && l->nodes[prev].is_free) merge_into(l, prev, n);
  return YK_EXTENT_OK;
}

uint64_t yk_extent_largest_free(const yk_extent_list *l) {
  uint64_t largest = 0;
  for (int32_t n = l->free_head; n != NONE; n = l->nodes[n].free_next)
    if (l->nodes[n].size > largest) largest = l->nodes[n].size;
  return largest;
}
