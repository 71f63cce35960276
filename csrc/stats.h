/*
 * stats.h - the server's counters: one writer (the serving thread), readers
 * on any thread (echo_server_stats), so plain relaxed atomics suffice.
 */
#ifndef PYECHO_STATS_H
#define PYECHO_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "pyecho.h"

typedef struct counters {
    _Atomic uint64_t accepted, open, rejected, bytes_in, bytes_out;
    _Atomic uint64_t closed[ECHO_CLOSE_REASONS];
    _Atomic uint64_t datagrams_in, datagrams_out;
    _Atomic uint64_t dropped[ECHO_DROP_REASONS];
} counters;

static inline void count(_Atomic uint64_t *c, uint64_t n)
{
    /* Single writer: a relaxed load and store, no locked instruction. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void uncount(_Atomic uint64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

static inline uint64_t counted(const _Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

#endif
