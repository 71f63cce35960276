/*
 * loop.c - see loop.h.
 */
#define _GNU_SOURCE /* struct mmsghdr in compat.h, on glibc */
#include <errno.h>
#include <stdlib.h>

#include "compat.h"
#include "loop.h"

#define BATCH 256                /* I/O events handled per turn */
#define LONGEST_WAIT_MS 3600000  /* keeps the wait in an int */
#define HEAP_MIN 64              /* timers that can start without allocating */

struct ev_loop {
    poller *poller;
    uint64_t now;
    ev_timer **heap;     /* min-heap of pending timers */
    size_t heap_len, heap_cap;
    uint64_t next_seq;
    poller_event fired[BATCH];
    int fired_n, fired_next; /* the batch being dispatched */
};

uint64_t ev_now(const ev_loop *loop)
{
    return loop->now;
}

void ev_update_now(ev_loop *loop)
{
    loop->now = compat_now_ms();
}

/* ---- I/O watchers -------------------------------------------------------- */

int ev_io_start(ev_loop *loop, ev_io *io, int fd, uint32_t mask, ev_io_fn fn)
{
    int rc = poller_add(loop->poller, fd, mask, io);

    if (rc == 0) {
        io->fd = fd;
        io->mask = mask;
        io->fn = fn;
    }
    return rc;
}

int ev_io_set(ev_loop *loop, ev_io *io, uint32_t mask)
{
    int rc;

    if (mask == io->mask)
        return 0;
    rc = poller_mod(loop->poller, io->fd, io->mask, mask, io);
    if (rc == 0)
        io->mask = mask;
    return rc;
}

void ev_io_stop(ev_loop *loop, ev_io *io)
{
    poller_del(loop->poller, io->fd, io->mask);
    io->mask = 0;
    /* Its events still waiting in this batch must not run. */
    for (int i = loop->fired_next; i < loop->fired_n; i++) {
        if (loop->fired[i].ptr == io)
            loop->fired[i].ptr = NULL;
    }
}

/* ---- timers: a binary min-heap of (when, seq) ------------------------------ */

static int earlier(const ev_timer *a, const ev_timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void heap_put(ev_loop *loop, size_t i, ev_timer *t)
{
    loop->heap[i] = t;
    t->slot = i + 1;
}

static void sift_up(ev_loop *loop, size_t i)
{
    ev_timer *t = loop->heap[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(t, loop->heap[parent]))
            break;
        heap_put(loop, i, loop->heap[parent]);
        i = parent;
    }
    heap_put(loop, i, t);
}

static void sift_down(ev_loop *loop, size_t i)
{
    ev_timer *t = loop->heap[i];

    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= loop->heap_len)
            break;
        if (child + 1 < loop->heap_len && earlier(loop->heap[child + 1], loop->heap[child]))
            child++;
        if (!earlier(loop->heap[child], t))
            break;
        heap_put(loop, i, loop->heap[child]);
        i = child;
    }
    heap_put(loop, i, t);
}

void ev_timer_stop(ev_loop *loop, ev_timer *t)
{
    size_t i, last;

    if (t->slot == 0)
        return;
    i = t->slot - 1;
    last = --loop->heap_len;
    t->slot = 0;
    if (i == last)
        return;
    /* The last timer fills the hole, then moves down or up to its place. */
    heap_put(loop, i, loop->heap[last]);
    sift_down(loop, i);
    sift_up(loop, i);
}

int ev_timer_start(ev_loop *loop, ev_timer *t, uint64_t when, ev_timer_fn fn)
{
    ev_timer_stop(loop, t);
    if (loop->heap_len == loop->heap_cap) {
        size_t cap = loop->heap_cap * 2;
        ev_timer **grown = realloc(loop->heap, cap * sizeof *grown);

        if (grown == NULL)
            return -ENOMEM;
        loop->heap = grown;
        loop->heap_cap = cap;
    }
    t->when = when;
    t->seq = loop->next_seq++;
    t->fn = fn;
    loop->heap[loop->heap_len] = t;
    sift_up(loop, loop->heap_len++);
    return 0;
}

/* Run the timers due now. One started meanwhile waits for the next turn,
 * so a timer that re-arms itself for "now" cannot hold the loop. */
static void run_timers(ev_loop *loop)
{
    uint64_t started_before = loop->next_seq;

    while (loop->heap_len > 0) {
        ev_timer *t = loop->heap[0];

        if (t->when > loop->now || t->seq >= started_before)
            break;
        ev_timer_stop(loop, t);
        t->fn(loop, t);
    }
}

/* How long the poller may sleep: until the first timer, at most timeout_ms. */
static int wait_ms(const ev_loop *loop, int timeout_ms)
{
    uint64_t limit = timeout_ms < 0 || timeout_ms > LONGEST_WAIT_MS ? LONGEST_WAIT_MS
                                                                    : (uint64_t)timeout_ms;

    if (loop->heap_len > 0) {
        uint64_t when = loop->heap[0]->when;
        uint64_t left = when > loop->now ? when - loop->now : 0;

        if (left < limit)
            limit = left;
    }
    return (int)limit;
}

/* ---- wake-up -------------------------------------------------------------- */

int ev_wake(ev_loop *loop)
{
    return poller_wake(loop->poller);
}

/* ---- the loop -------------------------------------------------------------- */

int ev_run_once(ev_loop *loop, int timeout_ms)
{
    int n = poller_wait(loop->poller, loop->fired, BATCH, wait_ms(loop, timeout_ms));

    if (n < 0)
        return n;
    loop->now = compat_now_ms();
    loop->fired_n = n;
    for (loop->fired_next = 0; loop->fired_next < n;) {
        poller_event *ev = &loop->fired[loop->fired_next++];
        ev_io *io = ev->ptr;
        uint32_t ready = ev->ready;

        if (io == NULL)
            continue; /* stopped earlier in this batch */
        if (ready & EV_ERROR)
            ready |= io->mask;
        ready &= io->mask;
        if (ready != 0)
            io->fn(loop, io, ready);
    }
    loop->fired_n = loop->fired_next = 0;
    run_timers(loop);
    return n;
}

int ev_loop_new(ev_loop **out)
{
    ev_loop *loop = calloc(1, sizeof *loop);
    int rc;

    if (loop == NULL)
        return -ENOMEM;
    loop->heap = malloc(HEAP_MIN * sizeof *loop->heap);
    loop->heap_cap = HEAP_MIN;
    rc = loop->heap == NULL ? -ENOMEM : poller_new(&loop->poller);
    if (rc != 0) {
        free(loop->heap);
        free(loop);
        return rc;
    }
    loop->now = compat_now_ms();
    *out = loop;
    return 0;
}

void ev_loop_free(ev_loop *loop)
{
    if (loop == NULL)
        return;
    poller_free(loop->poller);
    free(loop->heap);
    free(loop);
}
