/*
 * faults.c - see faults.h, and echo_faults in pyecho.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "faults.h"

#define PPM 1000000u
#define MAX_MS 4000000000u       /* keeps ms sums far from overflow */
#define MAX_BYTES ((int64_t)1 << 50)

void echo_faults_default(echo_faults *f)
{
    memset(f, 0, sizeof *f);
    f->limit = -1;
    f->reset_after_ms = -1;
    f->stall_after = -1;
}

int echo_faults_check(const echo_faults *f, int transport)
{
    int tcp_only, udp_only;

    if (f == NULL || (transport != ECHO_TCP && transport != ECHO_UDP))
        return -EINVAL;
    if (f->latency_ms > MAX_MS || f->jitter_ms > MAX_MS || f->slice_delay_ms > MAX_MS ||
        f->close_delay_ms > MAX_MS || f->accept_delay_ms > MAX_MS ||
        f->handshake_delay_ms > MAX_MS)
        return -EINVAL;
    if (f->handshake_stall < 0 || f->handshake_stall > 1 || f->handshake_reset_ppm > PPM)
        return -EINVAL;
    if (f->limit < -1 || f->limit > MAX_BYTES || f->stall_after < -1 ||
        f->stall_after > MAX_BYTES || f->reset_after_ms < -1 || f->reset_after_ms > MAX_MS)
        return -EINVAL;
    if (f->rate > (uint64_t)MAX_BYTES || f->refuse_ppm > PPM || f->drop_ppm > PPM ||
        f->duplicate_ppm > PPM)
        return -EINVAL;
    if (f->slice == 0 && f->slice_delay_ms != 0)
        return -EINVAL;
    tcp_only = f->rate || f->slice || f->limit >= 0 || f->reset_after_ms >= 0 ||
               f->stall_after >= 0 || f->close_delay_ms || f->accept_delay_ms || f->refuse_ppm ||
               f->handshake_delay_ms || f->handshake_stall || f->handshake_reset_ppm;
    udp_only = f->drop_ppm || f->duplicate_ppm;
    if ((transport == ECHO_UDP && tcp_only) || (transport == ECHO_TCP && udp_only))
        return -EINVAL;
    return 0;
}

/* ---- the generator ---------------------------------------------------------- */

uint64_t fx_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t fx_rng_seed(uint64_t seed, uint64_t stream)
{
    uint64_t state = seed ^ (stream * 0xD1B54A32D192ED03ull);

    fx_rng_next(&state); /* one step, so nearby seeds diverge at once */
    return state;
}

int fx_chance(uint64_t *state, uint32_t ppm)
{
    if (ppm == 0)
        return 0;
    if (ppm >= PPM)
        return 1;
    return fx_rng_next(state) % PPM < ppm;
}

uint64_t fx_delay(uint64_t *state, const echo_faults *f)
{
    int64_t ms = f->latency_ms;

    if (f->jitter_ms > 0)
        ms += (int64_t)(fx_rng_next(state) % (2 * (uint64_t)f->jitter_ms + 1)) - f->jitter_ms;
    return ms > 0 ? (uint64_t)ms : 0;
}

/* ---- the queue ---------------------------------------------------------------- */

int fx_queue_push(fx_queue *q, uint64_t due_ms, const uint8_t *data, size_t len,
                  const net_addr *to, int merge)
{
    fx_chunk *c;

    if (q->tail != NULL && due_ms < q->tail->due_ms)
        due_ms = q->tail->due_ms; /* never overtake what came before */
    if (merge && q->tail != NULL && q->tail->due_ms == due_ms) {
        c = realloc(q->tail, sizeof *c + q->tail->len + len);
        if (c == NULL)
            return -1;
        *q->tail_link = q->tail = c;
        memcpy(c->data + c->len, data, len);
        c->len += len;
        q->cost += len;
        return 0;
    }
    c = malloc(sizeof *c + len);
    if (c == NULL)
        return -1;
    c->next = NULL;
    c->due_ms = due_ms;
    if (to != NULL)
        c->to = *to;
    c->len = len;
    memcpy(c->data, data, len);
    q->tail_link = q->tail != NULL ? &q->tail->next : &q->head;
    *q->tail_link = q->tail = c;
    q->cost += len + FX_CHUNK_COST;
    return 0;
}

fx_chunk *fx_queue_pop(fx_queue *q)
{
    fx_chunk *c = q->head;

    if (c == NULL)
        return NULL;
    q->head = c->next;
    if (q->head == NULL) {
        q->tail = NULL;
        q->tail_link = NULL;
    } else if (q->tail_link == &c->next) {
        q->tail_link = &q->head;
    }
    q->cost -= c->len + FX_CHUNK_COST;
    c->next = NULL;
    return c;
}

void fx_queue_hurry(fx_queue *q, uint64_t due_ms)
{
    for (fx_chunk *c = q->head; c != NULL; c = c->next) {
        if (c->due_ms > due_ms)
            c->due_ms = due_ms;
    }
}

void fx_queue_free(fx_queue *q)
{
    fx_chunk *c;

    while ((c = fx_queue_pop(q)) != NULL)
        free(c);
}
