/*
 * server.c - the echo server on the event loop (loop.h): TCP connections
 * here (their faults in tcp_faults.c), UDP datagrams in udp.c.
 *
 * Each connection echoes what echo_scan() releases. Output the client does
 * not take yet is queued per connection up to max_pending; past that the
 * connection is not read until it drains (backpressure), so memory stays
 * bounded and nothing is lost. pyecho/_pyserver.py is the same server in
 * Python.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compat.h"
#include "server.h"

#define READ_CHUNK (64 * 1024) /* bytes read at once in raw and line mode */
#define ACCEPT_BURST 64        /* connections accepted per readiness event */
#define ACCEPT_PAUSE_MS 100    /* back-off after running out of descriptors */
#define LINGER_MS 2000         /* longest wait for the peer's EOF after quit */
#define MAKE_ROOM_READS 16     /* input drained from a lingering connection closed early */

static uint64_t open_now(const echo_server *srv)
{
    return counted(&srv->stats.open);
}

/* ---- connection lists and their deadlines ------------------------------- */

static void list_unlink(conn_list *l, conn *c)
{
    if (c->prev) c->prev->next = c->next; else l->oldest = c->next;
    if (c->next) c->next->prev = c->prev; else l->newest = c->prev;
    c->prev = c->next = NULL;
}

static void on_idle(ev_loop *loop, ev_timer *t);
static void on_linger(ev_loop *loop, ev_timer *t);
static int flush_out(echo_server *srv, conn *c);
static int batch_end(echo_server *srv, conn *c);

/*
 * Start one of the server's own timers (the idle and linger deadlines, the
 * accept pause, the UDP release). It can fail (out of memory: the heap is
 * shared with the connections' fault timers); a server that silently lost
 * one would lose that feature, so the failure ends echo_server_run() with
 * the error, and the next run re-arms them all (rearm_all).
 */
static void server_timer(echo_server *srv, ev_timer *t, uint64_t when, ev_timer_fn fn)
{
    int rc = ev_timer_start(srv->loop, t, when, fn);

    if (rc != 0 && srv->failed == 0)
        srv->failed = rc;
}

/* Arm the list's timer at its oldest connection's deadline, unless it is
 * armed already: when it fires early (the oldest was touched since), it
 * re-arms itself here. */
static void arm_deadline(echo_server *srv, conn_list *l)
{
    int idle = l == &srv->active;
    uint64_t timeout = idle ? srv->cfg.idle_timeout_ms : LINGER_MS;

    if (timeout != 0 && l->oldest != NULL && !ev_timer_pending(&l->timer))
        server_timer(srv, &l->timer, l->oldest->last_active_ms + timeout,
                     idle ? on_idle : on_linger);
}

static void list_append(echo_server *srv, conn_list *l, conn *c)
{
    c->prev = l->newest;
    c->next = NULL;
    if (l->newest) l->newest->next = c; else l->oldest = c;
    l->newest = c;
    arm_deadline(srv, l);
}

static conn_list *list_of(echo_server *srv, const conn *c)
{
    return c->lingering ? &srv->lingering : &srv->active;
}

static void touch(echo_server *srv, conn *c)
{
    /* A TLS handshake is not activity: it must end within idle_timeout. */
    if (srv->cfg.idle_timeout_ms == 0 || c->lingering || (c->tls != NULL && !c->tls->ready))
        return;
    c->last_active_ms = ev_now(srv->loop);
    if (srv->active.newest != c) {
        list_unlink(&srv->active, c);
        list_append(srv, &srv->active, c);
    }
}

/* ---- events ------------------------------------------------------------ */

static void notify(echo_server *srv, conn *c, int kind, int reason)
{
    echo_event ev;

    if (srv->event_fn == NULL)
        return;
    memset(&ev, 0, sizeof ev);
    ev.kind = kind;
    ev.conn_id = c->id;
    ev.reason = reason;
    if (net_format(&c->peer, ev.host, sizeof ev.host, &ev.port) != 0)
        ev.host[0] = '\0';
    srv->event_fn(srv->event_ctx, &ev);
}

void conn_close(echo_server *srv, conn *c, int reason)
{
    ev_io_stop(srv->loop, &c->io);
    close(c->io.fd);
    list_unlink(list_of(srv, c), c);
    uncount(&srv->stats.open);
    count(&srv->stats.closed[reason], 1);
    notify(srv, c, ECHO_EVENT_CLOSE, reason);
    fx_free(srv, c->fx);
    tls_conn_free(c->tls);
    free(c->held);
    outbuf_free(&c->out);
    free(c);
}

/* Close with a reset (RST) instead of a FIN: SO_LINGER with no time. */
void conn_reset(echo_server *srv, conn *c, int reason)
{
    struct linger now = {1, 0};

    setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &now, sizeof now);
    conn_close(srv, c, reason);
}

/* Echo not yet handed to the kernel: queued, and held by faults. */
size_t queued(const conn *c)
{
    return c->out.len + (c->fx != NULL ? c->fx->delayed.cost + c->fx->stalled.len : 0);
}

/* Watch for input while the peer may still send, the queue has room and no
 * stall holds the echo (or, lingering, for its EOF); for output while
 * anything is queued and no fault holds sending back. Nothing while a fault
 * makes it wait. */
/* May the connection's input be read now (not lingering)? */
static int wants_input(echo_server *srv, conn *c)
{
    const conn_fx *fx = c->fx;

    return !c->closing && queued(c) < srv->cfg.max_pending &&
           (fx == NULL || (fx->waiting == 0 && !fx_stalled(srv, c)));
}

int update_interest(echo_server *srv, conn *c)
{
    uint32_t want = 0;
    const conn_fx *fx = c->fx;

    if (fx != NULL && fx->waiting != 0)
        return ev_io_set(srv->loop, &c->io, 0);
    if (c->lingering || wants_input(srv, c))
        want |= EV_READ;
    if (c->out.len > 0 && (fx == NULL || !ev_timer_pending(&fx->gate)))
        want |= EV_WRITE;
    return ev_io_set(srv->loop, &c->io, want);
}

int is_reset(int err)
{
    return err != EAGAIN && err != EWOULDBLOCK && err != EINTR;
}

/*
 * All echo is out and the connection ends. After the quit word (or the
 * limit fault) the peer may still be sending, and close() with unread input
 * answers with a reset that destroys echo still in flight to it. So linger
 * instead: shut our side (the FIN follows the echo), drop what the peer
 * sends, and close at its EOF or after LINGER_MS. The close_delay fault
 * makes any of these ends wait first.
 */
void conn_done(echo_server *srv, conn *c, int reason)
{
    conn_fx *fx = c->fx;

    if (fx != NULL && srv->faults != NULL && srv->faults->close_delay_ms > 0 &&
        !fx->close_waited) {
        fx->close_waited = 1;
        fx->waiting = CLOSE_WAIT;
        if (ev_timer_start(srv->loop, &fx->wait, ev_now(srv->loop) + srv->faults->close_delay_ms,
                           on_fx_wait) != 0 ||
            update_interest(srv, c) != 0)
            conn_close(srv, c, ECHO_CLOSE_RESET);
        return;
    }
    /* TLS: a close the server decides sends close_notify first (it ends
     * once that is out too). */
    if (c->tls != NULL && c->tls->ready && !c->tls->notified &&
        (reason == ECHO_CLOSE_PEER || reason == ECHO_CLOSE_QUIT || reason == ECHO_CLOSE_LIMIT)) {
        if (tls_close_notify(c->tls) != 0 || flush_out(srv, c) != 0) {
            conn_close(srv, c, ECHO_CLOSE_RESET);
            return;
        }
        if (c->out.len > 0) {
            if (update_interest(srv, c) != 0)
                conn_close(srv, c, ECHO_CLOSE_RESET);
            return;
        }
    }
    if ((reason != ECHO_CLOSE_QUIT && reason != ECHO_CLOSE_LIMIT) ||
        shutdown(c->io.fd, SHUT_WR) != 0) {
        conn_close(srv, c, reason);
        return;
    }
    list_unlink(&srv->active, c);
    c->lingering = 1;
    c->last_active_ms = ev_now(srv->loop);
    list_append(srv, &srv->lingering, c);
    if (update_interest(srv, c) != 0)
        conn_close(srv, c, reason);
}

/* Read and drop up to `reads` chunks of what a lingering peer sends (one
 * per readiness event, so a flood cannot hold the loop); 1 at its EOF (or
 * failure). */
static int drop_input(echo_server *srv, conn *c, int reads)
{
    for (int i = 0; i < reads; i++) {
        ssize_t n = recv(c->io.fd, srv->scratch, READ_CHUNK, 0);

        if (n > 0)
            count(&srv->stats.bytes_in, (uint64_t)n);
        else
            return n == 0 || is_reset(errno);
    }
    return 0;
}

int conn_settle(echo_server *srv, conn *c)
{
    if (c->closing && !c->lingering && queued(c) == 0 &&
        (c->fx == NULL || c->fx->waiting == 0)) {
        conn_done(srv, c, c->closing - 1);
        return 1;
    }
    if (update_interest(srv, c) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    return 0;
}

static void drop_held(conn *c);

void conn_finish(echo_server *srv, conn *c, int reason)
{
    /* TLS: the echo tls_progress() made so far goes first. */
    if (c->tls != NULL && c->tls->out != &c->out && flush_out(srv, c) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return;
    }
    drop_held(c);
    c->closing = 1 + reason;
    if (queued(c) == 0)
        conn_done(srv, c, reason);
    else if (update_interest(srv, c) != 0)
        conn_close(srv, c, ECHO_CLOSE_RESET);
}

/* ---- the echo path ------------------------------------------------------------ */

int out_add(echo_server *srv, conn *c, const uint8_t *data, size_t len)
{
    if (c->tls == NULL)
        return outbuf_append(&c->out, data, len);
    count(&srv->stats.bytes_out, (uint64_t)len); /* TLS: the echo, not its records */
    return tls_seal(c->tls, data, len);
}

/* Write what can go now; 0, or -1 if the connection failed. */
static int flush_out(echo_server *srv, conn *c)
{
    if (batch_end(srv, c) != 0)
        return -1;
    if (c->fx != NULL)
        return fx_flush(srv, c);
    while (c->out.len > 0) {
        ssize_t n = send(c->io.fd, outbuf_begin(&c->out), c->out.len,
                         COMPAT_MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0)
            return is_reset(errno) ? -1 : 0;
        if (c->tls == NULL)
            count(&srv->stats.bytes_out, (uint64_t)n);
        outbuf_consume(&c->out, (size_t)n);
    }
    return 0;
}

/* Echo data: straight to the socket when nothing is queued before it.
 * 0, 1 when the limit fault is reached, or -1 on failure. */
static int echo_out(echo_server *srv, conn *c, const uint8_t *data, size_t len)
{
    if (c->fx != NULL) {
        if (srv->faults != NULL)
            return fx_echo(srv, c, data, len);
        if (out_add(srv, c, data, len) != 0)
            return -1;
        return fx_flush(srv, c);
    }
    if (c->tls != NULL) /* (batching: sent at the end of tls_progress) */
        return out_add(srv, c, data, len) != 0 ? -1
               : c->tls->out != &c->out ? 0
                                        : flush_out(srv, c);
    if (c->out.len == 0 && len > 0) {
        ssize_t n = send(c->io.fd, data, len, COMPAT_MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n < 0) {
            if (is_reset(errno))
                return -1;
            n = 0;
        }
        count(&srv->stats.bytes_out, (uint64_t)n);
        data += n;
        len -= (size_t)n;
    }
    return outbuf_append(&c->out, data, len);
}

static void drop_held(conn *c)
{
    free(c->held);
    c->held = NULL;
    c->held_len = 0;
}

static int keep_held(echo_server *srv, conn *c, const uint8_t *rest, size_t len)
{
    if (len == 0) {
        drop_held(c);
        return 0;
    }
    if (c->held == NULL) {
        c->held = malloc(srv->cfg.max_line);
        if (c->held == NULL)
            return -1;
    }
    memcpy(c->held, rest, len);
    c->held_len = len;
    return 0;
}

/* n bytes came (0: the peer's EOF), after the held ones in srv->scratch:
 * echo what the framing releases. 1 if the connection was closed or is
 * ending (no more input for it). */
static int on_input(echo_server *srv, conn *c, size_t n)
{
    size_t held = c->held_len;
    uint8_t *buf = srv->scratch;
    size_t emit;
    int quit, rc;

    if (n == 0) {
        /* Half-close: a partial line is still echoed, nothing is lost. */
        drop_held(c);
        rc = echo_out(srv, c, buf, held);
        if (rc < 0)
            conn_close(srv, c, ECHO_CLOSE_RESET);
        else
            conn_finish(srv, c, rc == 1 ? ECHO_CLOSE_LIMIT : ECHO_CLOSE_PEER);
        return 1;
    }
    count(&srv->stats.bytes_in, (uint64_t)n);
    touch(srv, c);
    emit = echo_scan(&srv->cfg, &c->cont, buf, held + n, &quit);
    rc = echo_out(srv, c, buf, emit);
    if (rc < 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    if (rc == 1 || quit) {
        conn_finish(srv, c, rc == 1 ? ECHO_CLOSE_LIMIT : ECHO_CLOSE_QUIT);
        return 1;
    }
    if (srv->cfg.mode == ECHO_MODE_LINE && keep_held(srv, c, buf + emit, held + n - emit) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    if (update_interest(srv, c) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    return 0;
}

static size_t read_want(const echo_server *srv)
{
    return srv->cfg.mode == ECHO_MODE_SEED ? srv->cfg.bufsize : READ_CHUNK;
}

static void on_readable(echo_server *srv, conn *c)
{
    ssize_t n;

    if (c->held_len > 0)
        memcpy(srv->scratch, c->held, c->held_len);
    n = recv(c->io.fd, srv->scratch + c->held_len, read_want(srv), 0);
    if (n < 0) {
        if (is_reset(errno))
            conn_close(srv, c, ECHO_CLOSE_RESET);
        return;
    }
    (void)on_input(srv, c, (size_t)n);
}

/* ---- TLS (tls.c): between the socket's bytes and the echo ----------------- */

/* The handshake faults, decided when the first bytes of the handshake (the
 * ClientHello) come: 1 if the connection was reset, stalls or waits. */
static int handshake_faults(echo_server *srv, conn *c)
{
    const echo_faults *f = srv->faults;

    if (f == NULL)
        return 0;
    if (c->fx == NULL && fx_attach(srv, c) == NULL) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    if (fx_chance(&c->fx->rng, f->handshake_reset_ppm)) {
        conn_reset(srv, c, ECHO_CLOSE_HANDSHAKE);
        return 1;
    }
    if (f->handshake_stall) {
        c->tls->stalled = 1;
        return 1;
    }
    if (f->handshake_delay_ms > 0) {
        c->fx->waiting = HANDSHAKE_WAIT;
        if (ev_timer_start(srv->loop, &c->fx->wait, ev_now(srv->loop) + f->handshake_delay_ms,
                           on_fx_wait) != 0 ||
            update_interest(srv, c) != 0)
            conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    return 0;
}

/*
 * The records one tls_progress() makes (the handshake's flight, the session
 * tickets and the echo of what it read: up to 64 KiB in 16 KiB records) go
 * to srv->batch, then out with one send() at its end: a closed-loop client
 * is woken once, not once per record, as uvloop's transports write. Only
 * without faults (their queue is the connection's own, tcp_faults.c) and
 * with nothing queued before them. Whatever must see the connection's queue
 * (flush_out, conn_finish) takes them into it first (batch_end).
 */
static void batch_begin(echo_server *srv, conn *c)
{
    if (c->fx != NULL || c->out.len > 0)
        return;
    srv->batch.head = srv->batch.len = 0;
    c->tls->out = &srv->batch;
    c->tls->direct = 0;
}

/* The rest of the batch into the connection's queue; 0, or -1 out of memory. */
static int batch_end(echo_server *srv, conn *c)
{
    outbuf *b = &srv->batch;
    int rc = 0;

    if (c->tls == NULL || c->tls->out == &c->out)
        return 0;
    c->tls->out = &c->out;
    c->tls->direct = 1;
    if (b->len > 0)
        rc = outbuf_append(&c->out, outbuf_begin(b), b->len);
    b->head = b->len = 0;
    return rc;
}

/* Send the batch (c's queue was empty); 0, or -1 if the connection failed. */
static int batch_send(echo_server *srv, conn *c)
{
    outbuf *b = &srv->batch;

    if (c->tls->out != &c->out && b->len > 0) {
        ssize_t n = send(c->io.fd, outbuf_begin(b), b->len, COMPAT_MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n < 0) {
            if (is_reset(errno)) {
                (void)batch_end(srv, c);
                return -1;
            }
            n = 0;
        }
        b->head += (size_t)n;
        b->len -= (size_t)n;
    }
    return batch_end(srv, c);
}

/*
 * Move the handshake on, then decrypt and echo what came: OpenSSL reads the
 * socket itself (tls.c's BIO), reading ahead, one recv() of up to 64 KiB
 * and a little (its records) per readiness event, as the Python engine's one
 * 64 KiB read. Decrypting stops early when the connection may not take more
 * input (max_pending, a fault) or a turn's READ_CHUNK bytes of plaintext
 * are taken, as a plain connection's reads do, but what OpenSSL read already
 * is taken anyway (no readiness event would come for it): whole records,
 * bounded by that one read; a partial one waits for the rest to come.
 */
int tls_progress(echo_server *srv, conn *c)
{
    tls_conn *t = c->tls;
    size_t budget = READ_CHUNK;

    batch_begin(srv, c);
    if (!t->ready) {
        int rc = tls_handshake(t);

        if (rc < 0) {
            (void)flush_out(srv, c); /* its alert, if it can go at once */
            /* Input OpenSSL did not read (the client's next records) would
             * turn close() into a reset that destroys the alert in flight. */
            (void)recv(c->io.fd, srv->scratch, READ_CHUNK, MSG_DONTWAIT);
            conn_close(srv, c, t->failed ? ECHO_CLOSE_RESET : ECHO_CLOSE_HANDSHAKE);
            return 1;
        }
        if (rc == 0) {
            if (batch_send(srv, c) != 0 || flush_out(srv, c) != 0) {
                conn_close(srv, c, ECHO_CLOSE_RESET);
                return 1;
            }
            return conn_settle(srv, c);
        }
        touch(srv, c); /* its last flight goes with the first echo */
    }
    for (;;) {
        ssize_t n;

        if (budget == 0 || !wants_input(srv, c)) {
            if (tls_pending(t) == 0)
                break;
            t->read_done = 1; /* what OpenSSL holds is taken; the socket waits */
        }

        if (c->held_len > 0)
            memcpy(srv->scratch, c->held, c->held_len);
        n = tls_read(t, srv->scratch + c->held_len, read_want(srv));
        if (n == 0)
            break;
        if (n == -2) {
            /* A bad record: the echo of the records before it, and the
             * alert, go if they can at once (the batch would lose them). */
            (void)flush_out(srv, c);
            conn_close(srv, c, ECHO_CLOSE_RESET);
            return 1;
        }
        if (on_input(srv, c, n < 0 ? 0 : (size_t)n))
            return 1;
        budget -= (size_t)n < budget ? (size_t)n : budget;
    }
    /* Tickets, key updates: whatever reading made OpenSSL write. */
    if (tls_take(t) != 0 || batch_send(srv, c) != 0 || flush_out(srv, c) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    return conn_settle(srv, c);
}

static void on_tls_readable(echo_server *srv, conn *c)
{
    tls_conn *t = c->tls;
    ssize_t n;

    t->read_done = 0; /* readable: OpenSSL may recv() once more */
    if (!t->started || t->stalled) {
        /* Its first bytes (a peek: OpenSSL reads them) decide the handshake
         * faults; a stalled handshake's input is read and dropped. */
        n = recv(c->io.fd, srv->scratch, t->stalled ? READ_CHUNK : 1,
                 t->stalled ? 0 : MSG_PEEK);
        if (n < 0) {
            if (is_reset(errno))
                conn_close(srv, c, ECHO_CLOSE_RESET);
            return;
        }
        if (n == 0) {
            conn_close(srv, c, ECHO_CLOSE_HANDSHAKE); /* given up before its end */
            return;
        }
        if (t->stalled)
            return;
        t->started = 1;
        if (handshake_faults(srv, c))
            return;
    }
    (void)tls_progress(srv, c);
}

/* Returns 1 if the connection was closed. */
static int on_writable(echo_server *srv, conn *c)
{
    size_t before = c->out.len;

    if (flush_out(srv, c) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    if (c->out.len < before)
        touch(srv, c);
    return conn_settle(srv, c);
}

static void on_conn(ev_loop *loop, ev_io *io, uint32_t ready)
{
    conn *c = CONTAINER_OF(io, conn, io);
    echo_server *srv = c->srv;

    (void)loop;
    if ((ready & EV_WRITE) && on_writable(srv, c))
        return;
    if ((ready & EV_READ) && (c->io.mask & EV_READ)) {
        if (c->lingering == 0 && c->tls != NULL)
            on_tls_readable(srv, c);
        else if (!c->lingering)
            on_readable(srv, c);
        else if (drop_input(srv, c, 1))
            conn_close(srv, c, c->closing - 1);
    }
}

/* ---- deadlines ------------------------------------------------------------ */

/* reason -1: the reason each was ending for. */
static void close_expired(echo_server *srv, conn_list *l, uint64_t timeout, int reason)
{
    while (l->oldest != NULL && l->oldest->last_active_ms + timeout <= ev_now(srv->loop))
        conn_close(srv, l->oldest, reason >= 0 ? reason : l->oldest->closing - 1);
    arm_deadline(srv, l);
}

static void on_idle(ev_loop *loop, ev_timer *t)
{
    echo_server *srv = CONTAINER_OF(t, echo_server, active.timer);

    (void)loop;
    close_expired(srv, &srv->active, srv->cfg.idle_timeout_ms, ECHO_CLOSE_IDLE);
}

static void on_linger(ev_loop *loop, ev_timer *t)
{
    echo_server *srv = CONTAINER_OF(t, echo_server, lingering.timer);

    (void)loop;
    /* Their echo is out and they were ending (quit, limit): that is how
     * they end. */
    close_expired(srv, &srv->lingering, LINGER_MS, -1);
}

/* ---- accepting ----------------------------------------------------------- */

static void on_accept_pause_end(ev_loop *loop, ev_timer *t)
{
    echo_server *srv = CONTAINER_OF(t, echo_server, accept_pause);

    if (ev_io_set(loop, &srv->listener, EV_READ) != 0)
        server_timer(srv, t, ev_now(loop) + ACCEPT_PAUSE_MS, on_accept_pause_end);
}

/* Out of descriptors or memory: leave new connections in the backlog for a
 * while rather than spin on a listener that stays readable. */
static void pause_accepting(echo_server *srv)
{
    if (ev_io_set(srv->loop, &srv->listener, 0) == 0)
        server_timer(srv, &srv->accept_pause, ev_now(srv->loop) + ACCEPT_PAUSE_MS,
                     on_accept_pause_end);
}

static void add_conn(echo_server *srv, int fd, const net_addr *peer)
{
    const echo_faults *f = srv->faults;
    conn *c = calloc(1, sizeof *c);
    int one = 1;

    /* Echoes go out as they are made: do not hold them back to coalesce. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c == NULL || ev_io_start(srv->loop, &c->io, fd, EV_READ, on_conn) != 0) {
        close(fd);
        free(c);
        pause_accepting(srv);
        return;
    }
    c->srv = srv;
    c->peer = *peer;
    if (srv->tls != NULL && (c->tls = tls_conn_new(srv->tls, fd, &c->out)) == NULL) {
        ev_io_stop(srv->loop, &c->io);
        close(fd);
        free(c);
        pause_accepting(srv);
        return;
    }
    c->id = ++srv->next_id;
    c->opened_ms = c->last_active_ms = ev_now(srv->loop);
    list_append(srv, &srv->active, c);
    count(&srv->stats.accepted, 1);
    count(&srv->stats.open, 1);
    notify(srv, c, ECHO_EVENT_OPEN, 0);
    if (f == NULL)
        return;
    /* Faults: its generator's first draw decides `refuse`. */
    if (fx_attach(srv, c) == NULL) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return;
    }
    if (fx_chance(&c->fx->rng, f->refuse_ppm)) {
        conn_reset(srv, c, ECHO_CLOSE_REFUSED);
        return;
    }
    if (f->accept_delay_ms > 0) {
        c->fx->waiting = ACCEPT_WAIT;
        if (ev_timer_start(srv->loop, &c->fx->wait, c->opened_ms + f->accept_delay_ms,
                           on_fx_wait) != 0) {
            conn_close(srv, c, ECHO_CLOSE_RESET);
            return;
        }
    }
    fx_update(srv, c);
}

/*
 * Is there room for one more client? Lingering connections (after the quit
 * word) hold descriptors too, so they count; at the limit the oldest of them
 * is closed to make room: its echo is out and it was ending anyway.
 */
static int make_room(echo_server *srv)
{
    conn *oldest = srv->lingering.oldest;

    if (srv->cfg.max_clients == 0 || open_now(srv) < srv->cfg.max_clients)
        return 1;
    if (oldest == NULL)
        return 0;
    /* Unread input would turn close() into a reset: drop it first. */
    drop_input(srv, oldest, MAKE_ROOM_READS);
    conn_close(srv, oldest, oldest->closing - 1);
    return 1;
}

static void on_acceptable(ev_loop *loop, ev_io *io, uint32_t ready)
{
    echo_server *srv = CONTAINER_OF(io, echo_server, listener);

    (void)loop;
    (void)ready;
    for (int i = 0; i < ACCEPT_BURST; i++) {
        net_addr peer;
        socklen_t len = sizeof peer;
        int fd = compat_accept(io->fd, &peer.sa, &len);

        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            pause_accepting(srv); /* EMFILE, ENFILE, ENOBUFS, ENOMEM */
            return;
        }
        if (!make_room(srv)) {
            close(fd);
            count(&srv->stats.rejected, 1);
            continue;
        }
        add_conn(srv, fd, &peer);
    }
}

/* ---- UDP ------------------------------------------------------------------ */

static void on_udp_release(ev_loop *loop, ev_timer *t)
{
    echo_server *srv = CONTAINER_OF(t, echo_server, udp_release);
    uint64_t due = udp_echo_release(srv->udp, srv->listener.fd, ev_now(loop));

    if (due != UINT64_MAX)
        server_timer(srv, t, due, on_udp_release);
}

/* UDP: keep the release timer at the first held datagram's time. */
static void arm_udp_release(echo_server *srv)
{
    uint64_t due = udp_echo_due(srv->udp);

    if (due == UINT64_MAX)
        ev_timer_stop(srv->loop, &srv->udp_release);
    else if (!ev_timer_pending(&srv->udp_release) || srv->udp_release.when != due)
        server_timer(srv, &srv->udp_release, due, on_udp_release);
}

static void on_datagrams(ev_loop *loop, ev_io *io, uint32_t ready)
{
    echo_server *srv = CONTAINER_OF(io, echo_server, listener);

    (void)ready;
    udp_echo_readable(srv->udp, io->fd, ev_now(loop));
    arm_udp_release(srv);
}

static void on_drop(void *ctx, int reason, const net_addr *src, uint64_t n)
{
    echo_server *srv = ctx;
    echo_event ev;

    if (srv->event_fn == NULL)
        return;
    memset(&ev, 0, sizeof ev);
    ev.kind = ECHO_EVENT_DROP;
    ev.reason = reason;
    ev.count = n;
    if (net_format(src, ev.host, sizeof ev.host, &ev.port) != 0)
        ev.host[0] = '\0';
    srv->event_fn(srv->event_ctx, &ev);
}

/* ---- the loop ------------------------------------------------------------ */

static void close_all(echo_server *srv)
{
    while (srv->active.oldest != NULL)
        conn_close(srv, srv->active.oldest, ECHO_CLOSE_SHUTDOWN);
    /* Their echo is out and they were ending: that is how they end. */
    while (srv->lingering.oldest != NULL)
        conn_close(srv, srv->lingering.oldest, srv->lingering.oldest->closing - 1);
}

/* ---- faults, changed from any thread --------------------------------------- */

static int faults_off(const echo_faults *f)
{
    echo_faults off;

    echo_faults_default(&off);
    off.seed = f->seed;
    return memcmp(&off, f, sizeof off) == 0;
}

/* Take the faults echo_server_set_faults() left, if any, and apply them to
 * every open connection (on the loop's thread, at the start of a turn). */
static void take_faults(echo_server *srv)
{
    echo_faults *f = atomic_exchange(&srv->pending_faults, NULL);
    echo_faults *old = srv->faults;

    if (f == NULL)
        return;
    if (faults_off(f)) {
        free(f);
        f = NULL;
    }
    srv->faults = f;
    if (srv->udp != NULL) {
        udp_echo_set_faults(srv->udp, f, srv->listener.fd, ev_now(srv->loop));
        arm_udp_release(srv);
    }
    free(old);
    for (conn_list *l = &srv->active; l != NULL; l = l == &srv->active ? &srv->lingering : NULL) {
        conn *c = l->oldest;

        while (c != NULL) {
            conn *next = c->next;

            fx_update(srv, c);
            c = next;
        }
    }
}

/* Was a stop asked for? Then close every connection and end the session. */
static int stopped(echo_server *srv)
{
    if (!atomic_load(&srv->stop))
        return 0;
    close_all(srv);
    if (srv->udp != NULL) {
        udp_echo_discard(srv->udp, ev_now(srv->loop));
        arm_udp_release(srv);
    }
    /* Only now: a stop asked for by a close event belongs to this stop. */
    atomic_store(&srv->stop, 0);
    return 1;
}

/* At the start of a run: every server timer its state needs, in case one
 * could not start before (the run that failed returned the error). */
static void rearm_all(echo_server *srv)
{
    arm_deadline(srv, &srv->active);
    arm_deadline(srv, &srv->lingering);
    if (srv->udp != NULL)
        arm_udp_release(srv);
    else if (srv->listener.mask == 0 && !ev_timer_pending(&srv->accept_pause))
        server_timer(srv, &srv->accept_pause, ev_now(srv->loop), on_accept_pause_end);
}

#define FOREVER UINT64_MAX

int echo_server_run(echo_server *srv, int timeout_ms)
{
    uint64_t deadline;

    if (srv == NULL)
        return -EINVAL;
    ev_update_now(srv->loop);
    deadline = timeout_ms >= 0 ? ev_now(srv->loop) + (uint64_t)timeout_ms : FOREVER;
    rearm_all(srv);
    for (;;) {
        uint64_t now;
        int rc;

        if (stopped(srv))
            return 0;
        take_faults(srv);
        if (srv->failed != 0) { /* a server timer could not start */
            rc = srv->failed;
            srv->failed = 0;
            return rc;
        }
        now = ev_now(srv->loop);
        if (now >= deadline)
            return 1;
        rc = ev_run_once(srv->loop, deadline == FOREVER ? -1 : (int)(deadline - now));
        if (rc < 0)
            return rc; /* -EINTR: the caller handles the signal, then runs again */
    }
}

/* ---- life cycle ----------------------------------------------------------- */

int echo_server_new(const echo_config *cfg, const char *host, int port,
                    echo_server **out)
{
    echo_server *srv;
    int fd, rc = echo_config_check(cfg);

    if (rc != 0 || host == NULL || out == NULL || port < 0 || port > 65535)
        return -EINVAL;
    srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return -ENOMEM;
    srv->cfg = *cfg;
    if (cfg->quit_word != NULL) {
        memcpy(srv->quit_word, cfg->quit_word, cfg->quit_len);
        srv->cfg.quit_word = srv->quit_word;
    }
    srv->listener.fd = -1;
    srv->scratch_cap = READ_CHUNK + (cfg->mode == ECHO_MODE_LINE ? cfg->max_line : 0);
    if (cfg->mode == ECHO_MODE_SEED && cfg->bufsize > srv->scratch_cap)
        srv->scratch_cap = cfg->bufsize;
    srv->scratch = malloc(srv->scratch_cap);
    if (srv->scratch == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = ev_loop_new(&srv->loop);
    if (rc != 0)
        goto fail;
    if (cfg->transport == ECHO_UDP) {
        rc = udp_echo_new(cfg, &srv->stats, on_drop, srv, &srv->udp);
        if (rc != 0)
            goto fail;
    }
    rc = net_listen(host, port, srv->udp ? SOCK_DGRAM : SOCK_STREAM, cfg->backlog, &fd);
    if (rc != 0)
        goto fail;
    if (srv->udp != NULL && (rc = udp_echo_bind(srv->udp, fd)) != 0) {
        close(fd);
        goto fail;
    }
    rc = ev_io_start(srv->loop, &srv->listener, fd, EV_READ,
                     srv->udp ? on_datagrams : on_acceptable);
    if (rc != 0) {
        close(fd);
        goto fail;
    }
    *out = srv;
    return 0;
fail:
    echo_server_free(srv);
    return rc;
}

int echo_server_address(const echo_server *srv, char *host, size_t hostlen,
                        int *port)
{
    net_addr addr;
    socklen_t len = sizeof addr;

    if (srv == NULL || host == NULL || port == NULL)
        return -EINVAL;
    if (getsockname(srv->listener.fd, &addr.sa, &len) != 0)
        return -errno;
    return net_format(&addr, host, hostlen, port);
}

void echo_server_set_event_fn(echo_server *srv, echo_event_fn fn, void *ctx)
{
    srv->event_fn = fn;
    srv->event_ctx = ctx;
}

int echo_server_set_faults(echo_server *srv, const echo_faults *f)
{
    echo_faults *copy;

    if (srv == NULL || (f != NULL && echo_faults_check(f, srv->cfg.transport) != 0))
        return -EINVAL;
    copy = malloc(sizeof *copy);
    if (copy == NULL)
        return -ENOMEM;
    if (f != NULL)
        *copy = *f;
    else
        echo_faults_default(copy);
    free(atomic_exchange(&srv->pending_faults, copy)); /* a newer one wins */
    return ev_wake(srv->loop);
}

int echo_server_set_tls(echo_server *srv, const echo_tls_config *tls)
{
    tls_ctx *ctx = NULL;
    int rc;

    if (srv == NULL || tls == NULL || srv->cfg.transport != ECHO_TCP)
        return -EINVAL;
    rc = tls_ctx_new(tls, &ctx, srv->tls_error, sizeof srv->tls_error);
    if (rc != 0)
        return rc;
    tls_ctx_free(srv->tls);
    srv->tls = ctx;
    return 0;
}

const char *echo_server_tls_error(const echo_server *srv)
{
    return srv != NULL ? srv->tls_error : "";
}

int echo_server_stop(echo_server *srv)
{
    if (srv == NULL)
        return -EINVAL;
    atomic_store(&srv->stop, 1);
    return ev_wake(srv->loop);
}

void echo_server_stats(const echo_server *srv, echo_stats *out)
{
    const counters *s = &srv->stats;

    memset(out, 0, sizeof *out);
    out->accepted = counted(&s->accepted);
    out->open = counted(&s->open);
    out->rejected = counted(&s->rejected);
    out->bytes_in = counted(&s->bytes_in);
    out->bytes_out = counted(&s->bytes_out);
    for (int i = 0; i < ECHO_CLOSE_REASONS; i++)
        out->closed[i] = counted(&s->closed[i]);
    out->datagrams_in = counted(&s->datagrams_in);
    out->datagrams_out = counted(&s->datagrams_out);
    for (int i = 0; i < ECHO_DROP_REASONS; i++)
        out->dropped[i] = counted(&s->dropped[i]);
}

void echo_server_free(echo_server *srv)
{
    if (srv == NULL)
        return;
    if (srv->loop != NULL) {
        close_all(srv);
        if (srv->listener.fd >= 0) {
            ev_io_stop(srv->loop, &srv->listener);
            close(srv->listener.fd);
        }
        ev_loop_free(srv->loop);
    }
    udp_echo_free(srv->udp);
    tls_ctx_free(srv->tls);
    outbuf_free(&srv->batch);
    free(srv->faults);
    free(atomic_load(&srv->pending_faults));
    free(srv->scratch);
    free(srv);
}
