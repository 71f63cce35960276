/*
 * test_loop.c - unit tests of csrc/loop.c: timers run in (when, start order),
 * never early, stop and restart in any order (checked against a model over
 * thousands of random operations), a callback stopping another watcher
 * mid-batch, and a wake-up that lands late costing one turn, not a spin.
 * CMake builds it once per poller the system has (loop_epoll, loop_poll,
 * loop_kqueue): none may depend on the order a backend reports ready fds in.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "loop.h"

#define CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

typedef struct rec_timer {
    ev_timer t;
    int id;
    uint64_t due;
} rec_timer;

typedef struct fired_log {
    int ids[20000];
    int n;
    int early;
} fired_log;

static fired_log *log_of; /* test-only: the callbacks' record */

static void on_timer(ev_loop *loop, ev_timer *t)
{
    rec_timer *r = CONTAINER_OF(t, rec_timer, t);

    if (ev_now(loop) < r->due)
        log_of->early++;
    log_of->ids[log_of->n++] = r->id;
}

static uint64_t ms_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void run_until_quiet(ev_loop *loop, int turns)
{
    for (int i = 0; i < turns; i++)
        CHECK(ev_run_once(loop, 0) >= 0);
}

static void test_timer_order_and_ties(void)
{
    ev_loop *loop;
    static rec_timer r[5];
    static fired_log log;
    uint64_t base;

    memset(&log, 0, sizeof log);
    log_of = &log;
    CHECK_EQ(ev_loop_new(&loop), 0);
    base = ev_now(loop);
    /* Same `when` for 1, 2, 3: they run in start order. */
    for (int i = 0; i < 5; i++) {
        r[i].id = i;
        r[i].due = base + (i == 0 ? 30 : i == 4 ? 5 : 10);
        CHECK_EQ(ev_timer_start(loop, &r[i].t, r[i].due, on_timer), 0);
    }
    CHECK(ev_timer_pending(&r[2].t));
    ev_timer_stop(loop, &r[2].t);
    CHECK(!ev_timer_pending(&r[2].t));
    ev_timer_stop(loop, &r[2].t); /* twice is fine */
    while (log.n < 4)
        CHECK(ev_run_once(loop, 100) >= 0);
    CHECK_EQ(log.n, 4);
    CHECK_EQ(log.ids[0], 4);
    CHECK_EQ(log.ids[1], 1);
    CHECK_EQ(log.ids[2], 3);
    CHECK_EQ(log.ids[3], 0);
    CHECK_EQ(log.early, 0);
    CHECK(ev_now(loop) >= base + 30);
    ev_loop_free(loop);
}

/* Thousands of random starts, restarts and stops against a simple model:
 * every pending timer fires exactly once, in (when, start order). */
static void test_timer_heap_against_a_model(void)
{
    enum { N = 5000 };
    static rec_timer r[N];
    static uint64_t order[N];  /* start order of the last start */
    static int pending[N];
    static fired_log log;
    ev_loop *loop;
    uint64_t base, seq = 0;
    int expect = 0;

    memset(&log, 0, sizeof log);
    memset(pending, 0, sizeof pending);
    log_of = &log;
    CHECK_EQ(ev_loop_new(&loop), 0);
    base = ev_now(loop) + 1000; /* all in the future while we shuffle */
    for (int i = 0; i < N; i++)
        r[i].id = i;
    for (int step = 0; step < 4 * N; step++) {
        int i = (int)(check_rand() % N);

        if (check_rand() % 4 == 0) {
            ev_timer_stop(loop, &r[i].t);
            pending[i] = 0;
        } else {
            r[i].due = base + check_rand() % 50;
            CHECK_EQ(ev_timer_start(loop, &r[i].t, base - 1000, on_timer), 0);
            /* a restart moves it: set the real time with a second start */
            CHECK_EQ(ev_timer_start(loop, &r[i].t, r[i].due, on_timer), 0);
            order[i] = seq++;
            pending[i] = 1;
        }
    }
    for (int i = 0; i < N; i++)
        expect += pending[i];
    while (log.n < expect && ev_now(loop) < base + 2000)
        CHECK(ev_run_once(loop, 100) >= 0);
    CHECK_EQ(log.n, expect);
    CHECK_EQ(log.early, 0);
    for (int k = 1; k < log.n; k++) {
        int a = log.ids[k - 1], b = log.ids[k];
        CHECK(r[a].due < r[b].due || (r[a].due == r[b].due && order[a] < order[b]));
    }
    for (int i = 0; i < N; i++)
        CHECK(!ev_timer_pending(&r[i].t));
    ev_loop_free(loop);
}

/* A timer that restarts itself for "now" runs once per turn, not forever. */
static int self_runs;

static void on_self(ev_loop *loop, ev_timer *t)
{
    self_runs++;
    CHECK_EQ(ev_timer_start(loop, t, ev_now(loop), on_self), 0);
}

static void test_a_timer_rearming_for_now_yields(void)
{
    ev_loop *loop;
    ev_timer t = {0};

    CHECK_EQ(ev_loop_new(&loop), 0);
    self_runs = 0;
    CHECK_EQ(ev_timer_start(loop, &t, ev_now(loop), on_self), 0);
    for (int i = 0; i < 10; i++)
        CHECK(ev_run_once(loop, 0) >= 0);
    CHECK_EQ(self_runs, 10);
    ev_timer_stop(loop, &t);
    ev_loop_free(loop);
}

/* Two readable sockets in one batch: the first one's callback stops the
 * second, whose event must not be dispatched. */
typedef struct pair_io {
    ev_io io;
    struct pair_io *other;
    int calls;
} pair_io;

static void on_pair(ev_loop *loop, ev_io *io, uint32_t ready)
{
    pair_io *p = CONTAINER_OF(io, pair_io, io);

    CHECK(ready & EV_READ);
    p->calls++;
    if (p->other->io.mask != 0)
        ev_io_stop(loop, &p->other->io);
}

static void test_stopping_another_watcher_mid_batch(void)
{
    ev_loop *loop;
    int a[2], b[2];
    pair_io pa = {0}, pb = {0};

    CHECK_EQ(ev_loop_new(&loop), 0);
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    pa.other = &pb;
    pb.other = &pa;
    CHECK_EQ(ev_io_start(loop, &pa.io, a[0], EV_READ, on_pair), 0);
    CHECK_EQ(ev_io_start(loop, &pb.io, b[0], EV_READ, on_pair), 0);
    CHECK_EQ(write(a[1], "x", 1), 1);
    CHECK_EQ(write(b[1], "x", 1), 1);
    CHECK_EQ(ev_run_once(loop, 1000), 2); /* both were ready in one batch */
    CHECK_EQ(pa.calls + pb.calls, 1);     /* the stopped one never ran */
    if (pa.io.mask != 0)
        ev_io_stop(loop, &pa.io);
    if (pb.io.mask != 0)
        ev_io_stop(loop, &pb.io);
    for (int i = 0; i < 2; i++) {
        close(a[i]);
        close(b[i]);
    }
    ev_loop_free(loop);
}

/* A wake-up that arrives after the turn it was meant for makes the next
 * turn return once; after that the loop sleeps again (defect: it spun). */
static void test_a_late_wake_up_costs_one_turn(void)
{
    ev_loop *loop;
    uint64_t t0;

    CHECK_EQ(ev_loop_new(&loop), 0);
    CHECK_EQ(ev_wake(loop), 0);
    CHECK_EQ(ev_wake(loop), 0);
    t0 = ms_now();
    CHECK_EQ(ev_run_once(loop, 1000), 0); /* the wake-up, drained: no I/O */
    CHECK(ms_now() - t0 < 500);
    t0 = ms_now();
    CHECK_EQ(ev_run_once(loop, 60), 0);  /* nothing: it slept */
    CHECK(ms_now() - t0 >= 50);
    run_until_quiet(loop, 3);
    ev_loop_free(loop);
}

/* ---- what is watched: an empty mask is not polled at all ------------------- */

typedef struct count_io {
    ev_io io;
    int calls;
    uint32_t ready;
} count_io;

static void on_count(ev_loop *loop, ev_io *io, uint32_t ready)
{
    count_io *c = CONTAINER_OF(io, count_io, io);

    (void)loop;
    c->calls++;
    c->ready |= ready;
}

/* A turn that must find nothing: it sleeps its whole timeout (a loop that
 * spins on an unwatched fd's hang-up returns at once, over and over). */
static void check_sleeps(ev_loop *loop, int ms)
{
    uint64_t t0 = ms_now();

    CHECK_EQ(ev_run_once(loop, ms), 0);
    CHECK(ms_now() - t0 >= (uint64_t)ms - 10);
}

static void test_an_empty_mask_is_not_polled(void)
{
    ev_loop *loop;
    int sp[2];
    count_io c = {0};
    char buf[8];

    CHECK_EQ(ev_loop_new(&loop), 0);
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    /* Started with nothing watched, data waiting and the peer gone: a hang-up
     * that epoll and poll() report for any fd they hold. */
    CHECK_EQ(write(sp[1], "x", 1), 1);
    CHECK_EQ(ev_io_start(loop, &c.io, sp[0], 0, on_count), 0);
    close(sp[1]);
    check_sleeps(loop, 60);
    CHECK_EQ(c.calls, 0);
    /* Watched: readable (and hung up) at once. */
    CHECK_EQ(ev_io_set(loop, &c.io, EV_READ), 0);
    CHECK_EQ(ev_run_once(loop, 1000), 1);
    CHECK_EQ(c.calls, 1);
    CHECK(c.ready & EV_READ);
    /* Empty again: silent again, however often it changes. */
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(ev_io_set(loop, &c.io, EV_READ | EV_WRITE), 0);
        CHECK_EQ(ev_io_set(loop, &c.io, 0), 0);
    }
    c.calls = 0;
    check_sleeps(loop, 60);
    CHECK_EQ(c.calls, 0);
    CHECK_EQ(ev_io_set(loop, &c.io, EV_READ), 0);
    CHECK_EQ(ev_run_once(loop, 1000), 1);
    CHECK_EQ(read(sp[0], buf, sizeof buf), 1);
    CHECK_EQ(read(sp[0], buf, sizeof buf), 0); /* the EOF */
    ev_io_stop(loop, &c.io);
    ev_io_stop(loop, &c.io); /* twice is fine */
    close(sp[0]);
    ev_loop_free(loop);
}

/* Reading, writing, both and neither, in every order, on one socket whose
 * peer reads nothing and writes once: each turn reports exactly what is
 * watched and ready. */
static void test_interest_changes(void)
{
    static const uint32_t masks[] = {EV_WRITE, EV_READ, EV_READ | EV_WRITE, 0,
                                     EV_READ,  0,       EV_WRITE,           EV_READ | EV_WRITE};
    ev_loop *loop;
    int sp[2];
    count_io c = {0};

    CHECK_EQ(ev_loop_new(&loop), 0);
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    CHECK_EQ(ev_io_start(loop, &c.io, sp[0], EV_READ, on_count), 0);
    check_sleeps(loop, 30); /* nothing to read yet */
    CHECK_EQ(c.calls, 0);
    CHECK_EQ(write(sp[1], "x", 1), 1); /* readable from now on */
    for (size_t i = 0; i < sizeof masks / sizeof masks[0]; i++) {
        CHECK_EQ(ev_io_set(loop, &c.io, masks[i]), 0);
        CHECK_EQ(c.io.mask, masks[i]);
        c.calls = 0;
        c.ready = 0;
        if (masks[i] == 0) {
            check_sleeps(loop, 30);
        } else {
            CHECK(ev_run_once(loop, 1000) >= 1);
            CHECK_EQ(c.ready, masks[i]);
        }
    }
    ev_io_stop(loop, &c.io);
    close(sp[0]);
    close(sp[1]);
    ev_loop_free(loop);
}

/* More ready fds than one turn handles (BATCH, 256): within a few turns
 * every one has run, whatever order the backend reports them in. */
#define MANY 300

static void test_more_ready_fds_than_a_batch(void)
{
    static int sp[MANY][2];
    static count_io c[MANY];
    ev_loop *loop;
    int turns = 0, all = 0;

    CHECK_EQ(ev_loop_new(&loop), 0);
    memset(c, 0, sizeof c);
    for (int i = 0; i < MANY; i++) {
        CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp[i]), 0);
        CHECK_EQ(write(sp[i][1], "x", 1), 1);
        CHECK_EQ(ev_io_start(loop, &c[i].io, sp[i][0], EV_READ, on_count), 0);
    }
    while (!all && turns++ < 4) {
        CHECK(ev_run_once(loop, 1000) > 0);
        all = 1;
        for (int i = 0; i < MANY; i++)
            all &= c[i].calls > 0;
    }
    CHECK(all);
    CHECK(turns <= 2); /* each turn takes a full batch or all that is left */
    for (int i = 0; i < MANY; i++) {
        ev_io_stop(loop, &c[i].io);
        close(sp[i][0]);
        close(sp[i][1]);
    }
    ev_loop_free(loop);
}

/* ev_wake() from another thread ends a wait with no time limit. */
static void *wake_later(void *arg)
{
    struct timespec ms50 = {0, 50 * 1000000L};

    nanosleep(&ms50, NULL);
    CHECK_EQ(ev_wake(arg), 0);
    return NULL;
}

static void test_a_wake_up_from_another_thread(void)
{
    ev_loop *loop;
    pthread_t t;
    uint64_t t0;
    int n;

    CHECK_EQ(ev_loop_new(&loop), 0);
    t0 = ms_now();
    CHECK_EQ(pthread_create(&t, NULL, wake_later, loop), 0);
    /* A timer bounds the test if the wake-up were lost. */
    do
        n = ev_run_once(loop, 5000);
    while (n == -EINTR);
    CHECK_EQ(n, 0);
    CHECK(ms_now() - t0 < 2000);
    CHECK_EQ(pthread_join(t, NULL), 0);
    ev_loop_free(loop);
}

int main(void)
{
    fprintf(stderr, "poller: %s\n", poller_name());
    RUN(test_timer_order_and_ties);
    RUN(test_timer_heap_against_a_model);
    RUN(test_a_timer_rearming_for_now_yields);
    RUN(test_stopping_another_watcher_mid_batch);
    RUN(test_a_late_wake_up_costs_one_turn);
    RUN(test_an_empty_mask_is_not_polled);
    RUN(test_interest_changes);
    RUN(test_more_ready_fds_than_a_batch);
    RUN(test_a_wake_up_from_another_thread);
    return check_summary("test_loop");
}
