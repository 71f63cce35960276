/*
 * tcp_faults.c - faults on a TCP connection's echo path (echo_faults in
 * pyecho.h; docs/PROTOCOL.md "Faults"): stall_after and limit cut the echo,
 * latency and jitter hold it, rate and slice pace it, reset_after,
 * accept_delay and close_delay time the connection. server.c calls in here
 * only for connections that faults ever applied to; with none the echo path
 * is untouched. pyecho/_pyserver.py's fault path is the same in Python.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "compat.h"
#include "server.h"

#define RATE_BURST_MS 10 /* a rate-limited send waits for this much */

static void on_fx_release(ev_loop *loop, ev_timer *t);
static void on_fx_gate(ev_loop *loop, ev_timer *t);
static void on_fx_reset(ev_loop *loop, ev_timer *t);

conn_fx *fx_attach(echo_server *srv, conn *c)
{
    conn_fx *fx = calloc(1, sizeof *fx);

    if (fx == NULL)
        return NULL;
    fx->c = c;
    fx->rng = fx_rng_seed(srv->faults->seed, c->id);
    /* TLS: records go through the output queue, where the faults act on them. */
    if (c->tls != NULL)
        c->tls->direct = 0;
    /* tokens_ms 0: the first refill finds a second gone, so the rate's
     * bucket starts full, like the UDP global one. */
    c->fx = fx;
    return fx;
}

void fx_free(echo_server *srv, conn_fx *fx)
{
    if (fx == NULL)
        return;
    ev_timer_stop(srv->loop, &fx->release);
    ev_timer_stop(srv->loop, &fx->gate);
    ev_timer_stop(srv->loop, &fx->reset);
    ev_timer_stop(srv->loop, &fx->wait);
    fx_queue_free(&fx->delayed);
    outbuf_free(&fx->stalled);
    free(fx);
}

/* Rate: refill the bucket; a burst is RATE_BURST_MS of the rate (1 byte at
 * least). Tokens are thousandths of a byte: the rate is bytes per second. */
static uint64_t fx_bucket_cap(uint64_t rate)
{
    uint64_t cap = rate * RATE_BURST_MS;

    return cap < 1000 ? 1000 : cap;
}

static void fx_refill(conn_fx *fx, uint64_t rate, uint64_t now)
{
    uint64_t cap = fx_bucket_cap(rate), elapsed = now - fx->tokens_ms;

    fx->tokens = elapsed >= RATE_BURST_MS + 1000 ? cap : fx->tokens + elapsed * rate;
    if (fx->tokens > cap)
        fx->tokens = cap;
    fx->tokens_ms = now;
}

/* Close the gate until `when`; 0, or -1 if no timer could be started. */
static int fx_hold(echo_server *srv, conn_fx *fx, uint64_t when)
{
    return ev_timer_start(srv->loop, &fx->gate, when, on_fx_gate) == 0 ? 0 : -1;
}

/* Send what the faults let go now (rate, slice); 0, or -1 if the
 * connection failed. */
int fx_flush(echo_server *srv, conn *c)
{
    const echo_faults *f = srv->faults;
    conn_fx *fx = c->fx;
    uint64_t now = ev_now(srv->loop);

    while (c->out.len > 0 && !ev_timer_pending(&fx->gate)) {
        size_t n = c->out.len;
        ssize_t sent;

        if (now < fx->next_send_ms)
            return fx_hold(srv, fx, fx->next_send_ms);
        if (f != NULL && f->slice != 0 && n > f->slice)
            n = f->slice;
        if (f != NULL && f->rate != 0) {
            uint64_t avail, want;

            fx_refill(fx, f->rate, now);
            avail = fx->tokens / 1000;
            want = fx_bucket_cap(f->rate) / 1000;
            if (want > n)
                want = n;
            if (avail < want) /* wait until a burst's worth (or all) may go */
                return fx_hold(srv, fx, now + (want * 1000 - fx->tokens + f->rate - 1) / f->rate);
            if (n > avail)
                n = (size_t)avail;
        }
        sent = send(c->io.fd, outbuf_begin(&c->out), n, COMPAT_MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0)
            return is_reset(errno) ? -1 : 0;
        if (c->tls == NULL) /* TLS counts the echo it encrypts (out_add) */
            count(&srv->stats.bytes_out, (uint64_t)sent);
        outbuf_consume(&c->out, (size_t)sent);
        if (f != NULL && f->rate != 0)
            fx->tokens -= (uint64_t)sent * 1000;
        if (f != NULL && f->slice != 0 && f->slice_delay_ms != 0 && c->out.len > 0)
            fx->next_send_ms = now + f->slice_delay_ms;
        if ((size_t)sent < n)
            return 0; /* the socket is full: wait until it is writable */
    }
    return 0;
}

/* Move the echo that is due from `delayed` to the output queue. */
static int fx_release_due(echo_server *srv, conn *c)
{
    conn_fx *fx = c->fx;
    uint64_t now = ev_now(srv->loop);

    while (fx->delayed.head != NULL && fx->delayed.head->due_ms <= now) {
        fx_chunk *ch = fx_queue_pop(&fx->delayed);
        int rc = out_add(srv, c, ch->data, ch->len);

        free(ch);
        if (rc != 0)
            return -1;
    }
    if (fx->delayed.head != NULL &&
        ev_timer_start(srv->loop, &fx->release, fx->delayed.head->due_ms, on_fx_release) != 0)
        return -1;
    return 0;
}

/* After the queues changed: send, then end the connection if it was ending
 * and everything is out, else watch what is needed. 1 if it was closed. */
static int fx_progress(echo_server *srv, conn *c)
{
    if (fx_release_due(srv, c) != 0 || fx_flush(srv, c) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    return conn_settle(srv, c);
}

int fx_stalled(const echo_server *srv, const conn *c)
{
    const echo_faults *f = srv->faults;
    const conn_fx *fx = c->fx;

    return fx->stalled.len > 0 ||
           (f != NULL && f->stall_after >= 0 && fx->echoed >= (uint64_t)f->stall_after);
}

/*
 * Echo data through the faults: stall_after and limit cut it, latency and
 * jitter hold it, rate and slice pace it (fx_flush). What the stall cuts off
 * is kept, in order, until the stall lifts (fx_update); the connection is
 * not read meanwhile, so the peer's sends wait in the kernel as with a
 * stalled peer. Returns 0, 1 when the limit is reached (the caller ends the
 * connection), or -1 on failure.
 */
int fx_echo(echo_server *srv, conn *c, const uint8_t *data, size_t len)
{
    const echo_faults *f = srv->faults;
    conn_fx *fx = c->fx;
    size_t whole = len;
    int limit_reached = 0;

    if (fx->stalled.len > 0) /* behind what is stalled already: it waits too */
        return outbuf_append(&fx->stalled, data, len) == 0 ? 0 : -1;
    if (f->stall_after >= 0 && fx->echoed + len > (uint64_t)f->stall_after)
        len = fx->echoed >= (uint64_t)f->stall_after ? 0 : (size_t)((uint64_t)f->stall_after - fx->echoed);
    if (f->limit >= 0 && fx->echoed + len >= (uint64_t)f->limit) {
        /* set_faults() may have lowered it below what was echoed already;
         * what follows the limit is never echoed, stalled or not. */
        len = fx->echoed >= (uint64_t)f->limit ? 0 : (size_t)((uint64_t)f->limit - fx->echoed);
        limit_reached = 1;
    } else if (len < whole && outbuf_append(&fx->stalled, data + len, whole - len) != 0) {
        return -1;
    }
    fx->echoed += len;
    if (len > 0 && (f->latency_ms != 0 || f->jitter_ms != 0)) {
        uint64_t due = ev_now(srv->loop) + fx_delay(&fx->rng, f);

        if (fx_queue_push(&fx->delayed, due, data, len, NULL, 1) != 0)
            return -1;
        if (!ev_timer_pending(&fx->release) &&
            ev_timer_start(srv->loop, &fx->release, fx->delayed.head->due_ms, on_fx_release) != 0)
            return -1;
    } else if (out_add(srv, c, data, len) != 0) {
        return -1;
    }
    if (fx_flush(srv, c) != 0)
        return -1;
    return limit_reached;
}

static void on_fx_release(ev_loop *loop, ev_timer *t)
{
    conn_fx *fx = CONTAINER_OF(t, conn_fx, release);

    (void)loop;
    fx_progress(fx->c->srv, fx->c);
}

static void on_fx_gate(ev_loop *loop, ev_timer *t)
{
    conn_fx *fx = CONTAINER_OF(t, conn_fx, gate);

    (void)loop;
    fx_progress(fx->c->srv, fx->c);
}

static void on_fx_reset(ev_loop *loop, ev_timer *t)
{
    conn_fx *fx = CONTAINER_OF(t, conn_fx, reset);

    (void)loop;
    conn_reset(fx->c->srv, fx->c, ECHO_CLOSE_RESET_AFTER);
}

/* accept_delay is over (serve it now), close_delay (end it now), or
 * handshake_delay (answer the ClientHello now). */
void on_fx_wait(ev_loop *loop, ev_timer *t)
{
    conn_fx *fx = CONTAINER_OF(t, conn_fx, wait);
    conn *c = fx->c;
    int was = fx->waiting;

    (void)loop;
    fx->waiting = 0;
    if (was == CLOSE_WAIT)
        conn_done(c->srv, c, c->closing - 1);
    else if (was == HANDSHAKE_WAIT)
        tls_progress(c->srv, c);
    else
        fx_progress(c->srv, c);
}

/*
 * The faults changed: echo what a stall kept, after everything before it,
 * through the new faults (a stall still in effect keeps what is past it
 * again). 1 if the connection was closed or ended.
 */
static int fx_unstall(echo_server *srv, conn *c)
{
    conn_fx *fx = c->fx;
    outbuf kept = fx->stalled;
    int rc;

    if (kept.len == 0)
        return 0;
    memset(&fx->stalled, 0, sizeof fx->stalled);
    if (srv->faults != NULL)
        rc = fx_echo(srv, c, outbuf_begin(&kept), kept.len);
    else
        rc = out_add(srv, c, outbuf_begin(&kept), kept.len) == 0 ? fx_flush(srv, c) : -1;
    outbuf_free(&kept);
    if (rc < 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    if (rc == 1) {
        conn_finish(srv, c, ECHO_CLOSE_LIMIT);
        return 1;
    }
    return conn_settle(srv, c);
}

/*
 * Bring a connection in line with the server's faults, new or changed:
 * reseed nothing (its generator is its own), re-arm reset_after from when
 * it opened, release held echo no later than the new latency allows (at
 * once with none), reopen the send gate, and echo what a stall kept (after
 * the held echo: order is kept). 1 if it was closed.
 */
int fx_update(echo_server *srv, conn *c)
{
    const echo_faults *f = srv->faults;
    uint64_t now = ev_now(srv->loop);
    conn_fx *fx = c->fx;

    if (f == NULL && fx == NULL)
        return 0;
    if (fx == NULL && (fx = fx_attach(srv, c)) == NULL) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    if (f != NULL && f->reset_after_ms >= 0) {
        uint64_t at = c->opened_ms + (uint64_t)f->reset_after_ms;

        if (ev_timer_start(srv->loop, &fx->reset, at > now ? at : now, on_fx_reset) != 0) {
            conn_close(srv, c, ECHO_CLOSE_RESET);
            return 1;
        }
    } else {
        ev_timer_stop(srv->loop, &fx->reset);
    }
    fx_queue_hurry(&fx->delayed, f == NULL ? now : now + f->latency_ms + f->jitter_ms);
    if (fx->delayed.head != NULL)
        ev_timer_stop(srv->loop, &fx->release);
    ev_timer_stop(srv->loop, &fx->gate);
    fx->next_send_ms = now;
    if (fx->waiting == ACCEPT_WAIT && (f == NULL || f->accept_delay_ms == 0)) {
        ev_timer_stop(srv->loop, &fx->wait);
        fx->waiting = 0;
    }
    if (fx_progress(srv, c))
        return 1;
    if (fx->waiting == HANDSHAKE_WAIT && (f == NULL || f->handshake_delay_ms == 0)) {
        ev_timer_stop(srv->loop, &fx->wait);
        fx->waiting = 0;
        if (tls_progress(srv, c))
            return 1;
    }
    return fx_unstall(srv, c);
}

