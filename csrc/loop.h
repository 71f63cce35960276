/*
 * loop.h - a small event loop: file watchers and timers, one thread.
 *
 * The shape of Redis's ae.c. Watchers and timers are structs the caller
 * embeds in its own objects (a connection holds its ev_io and ev_timers), so
 * starting and stopping them allocates nothing but the timer heap's array.
 * Timers live in a binary min-heap ordered by (when, start order): starting,
 * moving and stopping one is O(log n), and timers due at the same
 * millisecond run in the order they were started. pyecho/_pyloop.py is the
 * same loop in Python.
 *
 * Any callback may stop any watcher or timer, its own or another's: events
 * already fetched for a stopped watcher are dropped, so none ever reaches
 * freed memory.
 */
#ifndef PYECHO_LOOP_H
#define PYECHO_LOOP_H

#include <stddef.h>
#include <stdint.h>

#include "poller.h"

typedef struct ev_loop ev_loop;
typedef struct ev_io ev_io;
typedef struct ev_timer ev_timer;

/* ready: EV_READ and/or EV_WRITE, only of what the watcher watches (an error
 * or hang-up reports everything it watches: the next I/O call says which). */
typedef void (*ev_io_fn)(ev_loop *loop, ev_io *io, uint32_t ready);
typedef void (*ev_timer_fn)(ev_loop *loop, ev_timer *timer);

struct ev_io {
    int fd;
    uint32_t mask; /* what is watched now */
    ev_io_fn fn;
};

struct ev_timer {
    uint64_t when; /* ms on ev_now()'s clock */
    uint64_t seq;  /* start order, to break ties */
    size_t slot;   /* 1 + its index in the heap; 0 while not pending */
    ev_timer_fn fn;
};

int ev_loop_new(ev_loop **out);
/* Stops nothing and closes nothing of the caller's: stop watchers first. */
void ev_loop_free(ev_loop *loop);

/* Milliseconds on the monotonic clock, read once per turn of the loop. */
uint64_t ev_now(const ev_loop *loop);
/* Read the clock again (at the start of a run, say). */
void ev_update_now(ev_loop *loop);

int ev_io_start(ev_loop *loop, ev_io *io, int fd, uint32_t mask, ev_io_fn fn);
/* Change what is watched; a no-op when unchanged. */
int ev_io_set(ev_loop *loop, ev_io *io, uint32_t mask);
/* Stop watching (before the caller closes the fd). */
void ev_io_stop(ev_loop *loop, ev_io *io);

/* Run fn at `when` (ms, ev_now's clock) or as soon as possible after it;
 * restarts a pending timer. -ENOMEM if the heap cannot grow (never while
 * 64 or fewer timers are pending). */
int ev_timer_start(ev_loop *loop, ev_timer *t, uint64_t when, ev_timer_fn fn);
void ev_timer_stop(ev_loop *loop, ev_timer *t);
static inline int ev_timer_pending(const ev_timer *t) { return t->slot != 0; }

/* Make a waiting ev_run_once() return; from any thread or a signal handler. */
int ev_wake(ev_loop *loop);

/*
 * One turn: wait for I/O, the next timer or a wake-up, at most timeout_ms
 * (-1: no limit), run the callbacks of every ready watcher, then of every
 * timer due. Returns the number of I/O events, or -EINTR when a signal
 * interrupted the wait (nothing ran), or another negative errno.
 */
int ev_run_once(ev_loop *loop, int timeout_ms);

#endif
