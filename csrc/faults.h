/*
 * faults.h - the pieces of fault injection that are not I/O: the random
 * generator both engines share, and the queue that holds echo until its
 * time. server.c and udp.c use them; pyecho/_pyfaults.py is the Python twin.
 */
#ifndef PYECHO_FAULTS_H
#define PYECHO_FAULTS_H

#include <stddef.h>
#include <stdint.h>

#include "net.h"
#include "pyecho.h"

/* splitmix64: small, fast, and the same numbers in Python. */
uint64_t fx_rng_seed(uint64_t seed, uint64_t stream);
uint64_t fx_rng_next(uint64_t *state);
/* 1 with probability ppm per million (draws only when 0 < ppm < 1e6). */
int fx_chance(uint64_t *state, uint32_t ppm);
/* latency_ms plus a uniform draw in [-jitter_ms, +jitter_ms], at least 0
 * (draws only when jitter_ms > 0). */
uint64_t fx_delay(uint64_t *state, const echo_faults *f);

/* Bytes held until their time: a FIFO of chunks, each due at a time no
 * earlier than the one before it (order is kept). */
typedef struct fx_chunk {
    struct fx_chunk *next;
    uint64_t due_ms;
    net_addr to;       /* UDP: where it goes */
    net_pktinfo via;   /* UDP: the address it leaves from */
    int dup;           /* UDP: the second copy of a duplicated datagram */
    size_t len;
    uint8_t data[];
} fx_chunk;

typedef struct fx_queue {
    fx_chunk *head, *tail;
    fx_chunk **tail_link; /* what points at tail: &head or the one before's next */
    size_t cost;          /* bytes held plus FX_CHUNK_COST per chunk */
} fx_queue;

/* What a chunk costs against max_pending beyond its bytes: many tiny
 * chunks must not hold unbounded memory either. */
#define FX_CHUNK_COST 64

/* Queue len bytes due at due_ms (not before the tail's time); a TCP chunk
 * due with the tail is merged into it. 0, or -1 out of memory. */
int fx_queue_push(fx_queue *q, uint64_t due_ms, const uint8_t *data, size_t len,
                  const net_addr *to, int merge);
/* The head chunk, removed; the caller frees it. */
fx_chunk *fx_queue_pop(fx_queue *q);
/* Make every chunk due no later than due_ms (faults changed). */
void fx_queue_hurry(fx_queue *q, uint64_t due_ms);
void fx_queue_free(fx_queue *q);

#endif
