/*
 * server.c - the echo server: one thread, one epoll loop, many clients.
 *
 * Each connection echoes what echo_scan() releases. Output the client does
 * not take yet is queued per connection up to max_pending; past that the
 * connection is not read until it drains (backpressure), so memory stays
 * bounded and nothing is lost. pyecho/_pyengine.py is the same loop in Python.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "net.h"
#include "outbuf.h"
#include "pyecho.h"

#define READ_CHUNK (64 * 1024) /* bytes read at once in raw and line mode */
#define MAX_EVENTS 256         /* epoll events handled per wake-up */
#define ACCEPT_BURST 64        /* connections accepted per readiness event */
#define ACCEPT_PAUSE_MS 100    /* back-off after running out of descriptors */
#define LINGER_MS 2000         /* longest wait for the peer's EOF after quit */

typedef struct conn {
    int fd;
    uint32_t events;   /* what epoll watches now */
    int closing;       /* 0, or 1 + the close reason once the peer is done */
    int lingering;     /* after quit: output sent and shut, input dropped */
    int cont;          /* line mode: inside a line longer than max_line */
    uint64_t id;
    uint64_t last_active_ms;  /* or, lingering, when the lingering began */
    struct conn *prev, *next; /* in srv->active or srv->lingering */
    uint8_t *held;     /* line mode: a partial line, fewer than max_line bytes */
    size_t held_len;
    outbuf out;        /* echo the client has not taken yet */
    net_addr peer;
} conn;

typedef struct conn_list {
    conn *oldest, *newest;
} conn_list;

/* Counters have one writer (the serving thread) and readers anywhere. */
typedef struct counters {
    _Atomic uint64_t accepted, open, rejected, bytes_in, bytes_out;
    _Atomic uint64_t closed[ECHO_CLOSE_REASONS];
} counters;

struct echo_server {
    echo_config cfg;
    uint8_t quit_word[256];
    int epfd;
    int listen_fd, wake_fd; /* epoll's data.ptr: &listen_fd, &wake_fd or a conn */
    uint64_t accept_resume_ms; /* 0: accepting */
    uint64_t now_ms;
    uint64_t next_id;
    conn_list active;          /* least recently active first */
    conn_list lingering;       /* in the order they began lingering */
    uint64_t lingering_n;      /* how many: they do not count for max_clients */
    uint8_t *scratch;          /* held line + one read */
    size_t scratch_cap;
    echo_event_fn event_fn;
    void *event_ctx;
    atomic_int stop;
    counters stats;
    struct epoll_event events[MAX_EVENTS];
};

static void count(_Atomic uint64_t *c, uint64_t n)
{
    /* Single writer: a relaxed load and store, no locked instruction. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static void uncount(_Atomic uint64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

/* ---- connection lists (oldest first, for timeouts) ---------------------- */

static conn_list *list_of(echo_server *srv, const conn *c)
{
    return c->lingering ? &srv->lingering : &srv->active;
}

static void list_unlink(conn_list *l, conn *c)
{
    if (c->prev) c->prev->next = c->next; else l->oldest = c->next;
    if (c->next) c->next->prev = c->prev; else l->newest = c->prev;
    c->prev = c->next = NULL;
}

static void list_append(conn_list *l, conn *c)
{
    c->prev = l->newest;
    c->next = NULL;
    if (l->newest) l->newest->next = c; else l->oldest = c;
    l->newest = c;
}

static void touch(echo_server *srv, conn *c)
{
    if (srv->cfg.idle_timeout_ms == 0 || c->lingering)
        return;
    c->last_active_ms = srv->now_ms;
    if (srv->active.newest != c) {
        list_unlink(&srv->active, c);
        list_append(&srv->active, c);
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

static void conn_close(echo_server *srv, conn *c, int reason)
{
    /* close() alone would leave it in epoll if a fork() duplicated the fd. */
    epoll_ctl(srv->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    list_unlink(list_of(srv, c), c);
    if (c->lingering)
        srv->lingering_n--;
    uncount(&srv->stats.open);
    count(&srv->stats.closed[reason], 1);
    notify(srv, c, ECHO_EVENT_CLOSE, reason);
    free(c->held);
    outbuf_free(&c->out);
    free(c);
}

/* Watch for input while the peer may still send and the queue has room (or,
 * lingering, for its EOF); for output while anything is queued. */
static int update_interest(echo_server *srv, conn *c)
{
    uint32_t want = 0;
    struct epoll_event ev;

    if (c->lingering || (!c->closing && c->out.len < srv->cfg.max_pending))
        want |= EPOLLIN;
    if (c->out.len > 0)
        want |= EPOLLOUT;
    if (want == c->events)
        return 0;
    ev.events = want;
    ev.data.ptr = c;
    if (epoll_ctl(srv->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        return -errno;
    c->events = want;
    return 0;
}

static int is_reset(int err)
{
    return err != EAGAIN && err != EWOULDBLOCK && err != EINTR;
}

/*
 * All echo is out and the connection ends. After the quit word the peer may
 * still be sending, and close() with unread input answers with a reset that
 * destroys echo still in flight to it. So linger instead: shut our side (the
 * FIN follows the echo), drop what the peer sends, and close at its EOF or
 * after LINGER_MS.
 */
static void conn_done(echo_server *srv, conn *c, int reason)
{
    if (reason != ECHO_CLOSE_QUIT || shutdown(c->fd, SHUT_WR) != 0) {
        conn_close(srv, c, reason);
        return;
    }
    list_unlink(&srv->active, c);
    c->lingering = 1;
    srv->lingering_n++;
    c->last_active_ms = srv->now_ms;
    list_append(&srv->lingering, c);
    if (update_interest(srv, c) != 0)
        conn_close(srv, c, reason);
}

/* Lingering: read and drop; the peer's EOF (or failure) ends it. */
static void on_lingering_readable(echo_server *srv, conn *c)
{
    ssize_t n = recv(c->fd, srv->scratch, srv->scratch_cap, 0);

    if (n > 0)
        count(&srv->stats.bytes_in, (uint64_t)n);
    else if (n == 0 || is_reset(errno))
        conn_close(srv, c, ECHO_CLOSE_QUIT);
}

/* The peer is done (EOF or quit): end now or once the queue drains. */
static void finish(echo_server *srv, conn *c, int reason)
{
    c->closing = 1 + reason;
    if (c->out.len == 0)
        conn_done(srv, c, reason);
    else if (update_interest(srv, c) != 0)
        conn_close(srv, c, ECHO_CLOSE_RESET);
}

/* Write what can go now; 0, or -1 if the connection failed. */
static int flush_out(echo_server *srv, conn *c)
{
    while (c->out.len > 0) {
        ssize_t n = send(c->fd, outbuf_begin(&c->out), c->out.len,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0)
            return is_reset(errno) ? -1 : 0;
        count(&srv->stats.bytes_out, (uint64_t)n);
        outbuf_consume(&c->out, (size_t)n);
    }
    return 0;
}

/* Echo data: straight to the socket when nothing is queued before it. */
static int echo_out(echo_server *srv, conn *c, const uint8_t *data, size_t len)
{
    if (c->out.len == 0 && len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);

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

static int keep_held(echo_server *srv, conn *c, const uint8_t *rest, size_t len)
{
    if (len > 0 && c->held == NULL) {
        c->held = malloc(srv->cfg.max_line);
        if (c->held == NULL)
            return -1;
    }
    if (len > 0)
        memcpy(c->held, rest, len);
    c->held_len = len;
    if (len == 0) {
        free(c->held);
        c->held = NULL;
    }
    return 0;
}

static void on_readable(echo_server *srv, conn *c)
{
    size_t held = c->held_len;
    size_t want = srv->cfg.mode == ECHO_MODE_SEED ? srv->cfg.bufsize : READ_CHUNK;
    uint8_t *buf = srv->scratch;
    size_t emit;
    int quit;
    ssize_t n;

    if (held > 0)
        memcpy(buf, c->held, held);
    n = recv(c->fd, buf + held, want, 0);
    if (n < 0) {
        if (is_reset(errno))
            conn_close(srv, c, ECHO_CLOSE_RESET);
        return;
    }
    if (n == 0) {
        /* Half-close: a partial line is still echoed, nothing is lost. */
        if (echo_out(srv, c, buf, held) != 0)
            conn_close(srv, c, ECHO_CLOSE_RESET);
        else
            finish(srv, c, ECHO_CLOSE_PEER);
        return;
    }
    count(&srv->stats.bytes_in, (uint64_t)n);
    touch(srv, c);
    emit = echo_scan(&srv->cfg, &c->cont, buf, held + (size_t)n, &quit);
    if (echo_out(srv, c, buf, emit) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return;
    }
    if (quit) {
        free(c->held);
        c->held = NULL;
        c->held_len = 0;
        finish(srv, c, ECHO_CLOSE_QUIT);
        return;
    }
    if (srv->cfg.mode == ECHO_MODE_LINE &&
        keep_held(srv, c, buf + emit, held + (size_t)n - emit) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return;
    }
    if (update_interest(srv, c) != 0)
        conn_close(srv, c, ECHO_CLOSE_RESET);
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
    if (c->closing && c->out.len == 0) {
        conn_done(srv, c, c->closing - 1);
        return 1;
    }
    if (update_interest(srv, c) != 0) {
        conn_close(srv, c, ECHO_CLOSE_RESET);
        return 1;
    }
    return 0;
}

/* ---- accepting ----------------------------------------------------------- */

static int set_listening(echo_server *srv, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = &srv->listen_fd};

    return epoll_ctl(srv->epfd, EPOLL_CTL_MOD, srv->listen_fd, &ev) ? -errno : 0;
}

static void pause_accepting(echo_server *srv)
{
    if (set_listening(srv, 0) == 0)
        srv->accept_resume_ms = srv->now_ms + ACCEPT_PAUSE_MS;
}

static void add_conn(echo_server *srv, int fd, const net_addr *peer)
{
    struct epoll_event ev = {.events = EPOLLIN};
    conn *c = calloc(1, sizeof *c);
    int one = 1;

    /* Echoes go out as they are made: do not hold them back to coalesce. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c == NULL) {
        close(fd);
        pause_accepting(srv);
        return;
    }
    c->fd = fd;
    c->events = EPOLLIN;
    c->peer = *peer;
    c->id = ++srv->next_id;
    c->last_active_ms = srv->now_ms;
    ev.data.ptr = c;
    if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        close(fd);
        free(c);
        pause_accepting(srv);
        return;
    }
    list_append(&srv->active, c);
    count(&srv->stats.accepted, 1);
    count(&srv->stats.open, 1);
    notify(srv, c, ECHO_EVENT_OPEN, 0);
}

static void on_acceptable(echo_server *srv)
{
    for (int i = 0; i < ACCEPT_BURST; i++) {
        net_addr peer;
        socklen_t len = sizeof peer;
        int fd = accept4(srv->listen_fd, &peer.sa, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            pause_accepting(srv); /* EMFILE, ENFILE, ENOBUFS, ENOMEM */
            return;
        }
        if (srv->cfg.max_clients != 0 &&
            atomic_load_explicit(&srv->stats.open, memory_order_relaxed) -
                    srv->lingering_n >= srv->cfg.max_clients) {
            close(fd);
            count(&srv->stats.rejected, 1);
            continue;
        }
        add_conn(srv, fd, &peer);
    }
}

/* ---- the loop ------------------------------------------------------------ */

static void close_expired(echo_server *srv)
{
    uint32_t idle = srv->cfg.idle_timeout_ms;
    conn_list *l = &srv->active;

    while (idle != 0 && l->oldest != NULL && l->oldest->last_active_ms + idle <= srv->now_ms)
        conn_close(srv, l->oldest, ECHO_CLOSE_IDLE);
    l = &srv->lingering;
    while (l->oldest != NULL && l->oldest->last_active_ms + LINGER_MS <= srv->now_ms)
        conn_close(srv, l->oldest, ECHO_CLOSE_QUIT);
}

static void close_all(echo_server *srv, int reason)
{
    while (srv->active.oldest != NULL)
        conn_close(srv, srv->active.oldest, reason);
    /* Their echo is out and the peer asked to quit: that is how they end. */
    while (srv->lingering.oldest != NULL)
        conn_close(srv, srv->lingering.oldest, ECHO_CLOSE_QUIT);
}

#define FOREVER UINT64_MAX
#define LONGEST_WAIT_MS 3600000 /* keeps the int for epoll_wait in range */

/* How long epoll may sleep: until the deadline, the next idle or linger
 * expiry or the end of an accept pause, whichever is first; -1 for none. */
static int next_wait(const echo_server *srv, uint64_t deadline)
{
    uint64_t until = deadline;

    if (srv->cfg.idle_timeout_ms != 0 && srv->active.oldest != NULL) {
        uint64_t t = srv->active.oldest->last_active_ms + srv->cfg.idle_timeout_ms;
        if (t < until)
            until = t;
    }
    if (srv->lingering.oldest != NULL) {
        uint64_t t = srv->lingering.oldest->last_active_ms + LINGER_MS;
        if (t < until)
            until = t;
    }
    if (srv->accept_resume_ms != 0 && srv->accept_resume_ms < until)
        until = srv->accept_resume_ms;
    if (until == FOREVER)
        return -1;
    if (until <= srv->now_ms)
        return 0;
    return until - srv->now_ms > LONGEST_WAIT_MS ? LONGEST_WAIT_MS
                                                 : (int)(until - srv->now_ms);
}

static void dispatch(echo_server *srv, struct epoll_event *ev)
{
    conn *c = ev->data.ptr;

    if (ev->data.ptr == &srv->listen_fd) {
        on_acceptable(srv);
        return;
    }
    if (ev->data.ptr == &srv->wake_fd)
        return; /* the stop flag is checked by the loop */
    /* Errors and hang-ups surface through recv() or send(). */
    if (ev->events & (EPOLLERR | EPOLLHUP))
        ev->events |= c->events;
    if ((ev->events & EPOLLOUT) && on_writable(srv, c))
        return;
    if ((ev->events & EPOLLIN) && (c->events & EPOLLIN)) {
        if (c->lingering)
            on_lingering_readable(srv, c);
        else
            on_readable(srv, c);
    }
}

static int stopped(echo_server *srv)
{
    uint64_t drain;

    if (!atomic_load(&srv->stop))
        return 0;
    close_all(srv, ECHO_CLOSE_SHUTDOWN);
    /* Only now: a stop asked for by a close event belongs to this stop. */
    while (read(srv->wake_fd, &drain, sizeof drain) > 0)
        ;
    atomic_store(&srv->stop, 0);
    return 1;
}

int echo_server_run(echo_server *srv, int timeout_ms)
{
    uint64_t deadline;

    if (srv == NULL)
        return -EINVAL;
    srv->now_ms = net_now_ms();
    deadline = timeout_ms >= 0 ? srv->now_ms + (uint64_t)timeout_ms : FOREVER;
    for (;;) {
        int n;

        if (stopped(srv))
            return 0;
        n = epoll_wait(srv->epfd, srv->events, MAX_EVENTS,
                       next_wait(srv, deadline));
        if (n < 0) {
            if (errno == EINTR)
                return 1; /* let the caller handle the signal */
            return -errno;
        }
        srv->now_ms = net_now_ms();
        /* A connection is only ever closed from its own event here (an fd
         * appears once per batch, and conn_close removes it from epoll) or
         * after the batch, so no event can point at a freed connection. */
        for (int i = 0; i < n; i++)
            dispatch(srv, &srv->events[i]);
        close_expired(srv);
        if (srv->accept_resume_ms != 0 && srv->now_ms >= srv->accept_resume_ms) {
            if (set_listening(srv, EPOLLIN) == 0)
                srv->accept_resume_ms = 0;
        }
        if (srv->now_ms >= deadline)
            return 1;
    }
}

/* ---- life cycle ----------------------------------------------------------- */

int echo_server_new(const echo_config *cfg, const char *host, int port,
                    echo_server **out)
{
    struct epoll_event ev = {.events = EPOLLIN};
    echo_server *srv;
    int rc = echo_config_check(cfg);

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
    srv->epfd = srv->listen_fd = srv->wake_fd = -1;
    srv->scratch_cap = READ_CHUNK + (cfg->mode == ECHO_MODE_LINE ? cfg->max_line : 0);
    if (cfg->mode == ECHO_MODE_SEED && cfg->bufsize > srv->scratch_cap)
        srv->scratch_cap = cfg->bufsize;
    srv->scratch = malloc(srv->scratch_cap);
    if (srv->scratch == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    srv->epfd = epoll_create1(EPOLL_CLOEXEC);
    srv->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (srv->epfd < 0 || srv->wake_fd < 0) {
        rc = -errno;
        goto fail;
    }
    rc = net_listen(host, port, cfg->backlog, &srv->listen_fd);
    if (rc != 0)
        goto fail;
    ev.data.ptr = &srv->listen_fd;
    if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->listen_fd, &ev) != 0) {
        rc = -errno;
        goto fail;
    }
    ev.data.ptr = &srv->wake_fd;
    if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->wake_fd, &ev) != 0) {
        rc = -errno;
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
    if (getsockname(srv->listen_fd, &addr.sa, &len) != 0)
        return -errno;
    return net_format(&addr, host, hostlen, port);
}

void echo_server_set_event_fn(echo_server *srv, echo_event_fn fn, void *ctx)
{
    srv->event_fn = fn;
    srv->event_ctx = ctx;
}

int echo_server_stop(echo_server *srv)
{
    uint64_t one = 1;

    if (srv == NULL)
        return -EINVAL;
    atomic_store(&srv->stop, 1);
    /* write() is async-signal-safe; a full counter still wakes the loop. */
    if (write(srv->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        return -errno;
    return 0;
}

void echo_server_stats(const echo_server *srv, echo_stats *out)
{
    const counters *s = &srv->stats;

    out->accepted = atomic_load_explicit(&s->accepted, memory_order_relaxed);
    out->open = atomic_load_explicit(&s->open, memory_order_relaxed);
    out->rejected = atomic_load_explicit(&s->rejected, memory_order_relaxed);
    out->bytes_in = atomic_load_explicit(&s->bytes_in, memory_order_relaxed);
    out->bytes_out = atomic_load_explicit(&s->bytes_out, memory_order_relaxed);
    for (int i = 0; i < ECHO_CLOSE_REASONS; i++)
        out->closed[i] = atomic_load_explicit(&s->closed[i], memory_order_relaxed);
}

void echo_server_free(echo_server *srv)
{
    if (srv == NULL)
        return;
    close_all(srv, ECHO_CLOSE_SHUTDOWN);
    if (srv->listen_fd >= 0)
        close(srv->listen_fd);
    if (srv->wake_fd >= 0)
        close(srv->wake_fd);
    if (srv->epfd >= 0)
        close(srv->epfd);
    free(srv->scratch);
    free(srv);
}
