/*
 * loadgen.c - the benchmark's closed-loop load generator (see
 * pyecho_loadgen.h).
 *
 * Stream model: connection i sends an endless stream of messages; message k
 * is variant (i + k) mod V of a pattern of V distinct messages, stored twice
 * in a row, so any run of up to V consecutive messages is one contiguous
 * slice of memory. Sending is one send() of that slice, and verifying an echo
 * is memcmp() against it at the same stream offset: no per-byte work.
 *
 * Closed loop: a connection may have sent `depth` messages beyond the last
 * one fully echoed (limit), so the offered load follows the server.
 *
 * UDP datagrams are in loadgen_udp.c; the loops here drive both.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

#define MAX_CONNECTIONS 1000000u
#define MAX_DEPTH 1024u
#define MAX_MSG ((size_t)4 << 20)
#define MAX_PATTERN ((size_t)32 << 20) /* one copy of the V variants */
#define MIN_VARIANTS 8u
#define RECV_CHUNK (64 * 1024)
#define DEFAULT_WINDOW 64u
#define DEFAULT_TIMEOUT_MS 10000u
#define DEFAULT_LOSS_MS 500u

LG_API int echo_loadgen_abi_version(void)
{
    return ECHO_LOADGEN_ABI_VERSION;
}

LG_API size_t echo_loadgen_abi_sizeof(const char *name)
{
    if (name == NULL)
        return 0;
    if (strcmp(name, "echo_loadgen_config") == 0)
        return sizeof(echo_loadgen_config);
    if (strcmp(name, "echo_loadgen_result") == 0)
        return sizeof(echo_loadgen_result);
    return 0;
}

int lg_socket(int family, int type)
{
    int fd = compat_socket(family, type, 0);

    return fd < 0 ? -errno : fd;
}

uint64_t lg_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- histogram ----------------------------------------------------------- */

static unsigned bucket_of(uint64_t v)
{
    unsigned e;

    if (v < 2 * LG_SUB)
        return (unsigned)v;
    e = 63u - (unsigned)__builtin_clzll(v); /* v >= 2^(LG_SUB_BITS+1): e > LG_SUB_BITS */
    return (e - LG_SUB_BITS) * LG_SUB + (unsigned)(v >> (e - LG_SUB_BITS));
}

/* The middle of the values a bucket holds. */
static uint64_t bucket_value(unsigned b)
{
    unsigned shift;
    uint64_t low;

    if (b < 2 * LG_SUB)
        return b;
    shift = b / LG_SUB - 1;
    low = (uint64_t)(b % LG_SUB + LG_SUB) << shift;
    return low + ((uint64_t)1 << shift) / 2;
}

void lg_record(echo_loadgen *lg, uint64_t ns)
{
    lg->hist[bucket_of(ns)]++;
    lg->lat_count++;
    lg->lat_sum += ns;
    if (ns < lg->lat_min)
        lg->lat_min = ns;
    if (ns > lg->lat_max)
        lg->lat_max = ns;
}

static void reset_run(echo_loadgen *lg)
{
    memset(lg->hist, 0, sizeof lg->hist);
    lg->lat_count = lg->lat_sum = lg->lat_max = 0;
    lg->lat_min = UINT64_MAX;
    lg->round_trips = lg->bytes = 0;
    lg->lost = lg->late = 0;
}

LG_API uint64_t echo_loadgen_percentile(const echo_loadgen *lg, double q)
{
    uint64_t rank, seen = 0, v;

    if (lg == NULL || lg->lat_count == 0)
        return 0;
    if (!(q > 0.0))
        return lg->lat_min;
    if (q >= 1.0)
        return lg->lat_max;
    rank = (uint64_t)(q * (double)lg->lat_count);
    if ((double)rank < q * (double)lg->lat_count)
        rank++;
    if (rank == 0)
        rank = 1;
    for (unsigned b = 0; b < LG_BUCKETS; b++) {
        seen += lg->hist[b];
        if (seen >= rank) {
            v = bucket_value(b);
            if (v < lg->lat_min)
                v = lg->lat_min;
            if (v > lg->lat_max)
                v = lg->lat_max;
            return v;
        }
    }
    return lg->lat_max;
}

/* ---- errors ---------------------------------------------------------------- */

int lg_fail(echo_loadgen_result *res, int kind, int err, uint32_t conn, uint64_t offset)
{
    if (res != NULL && res->error == 0) {
        res->error = err;
        res->error_kind = kind;
        res->error_conn = conn;
        res->error_offset = offset;
    }
    return err;
}

/* A failed send or recv: a reset is the server closing early. */
static int io_fail(echo_loadgen_result *res, int err, const lg_conn *c)
{
    int kind = (err == ECONNRESET || err == EPIPE) ? ECHO_LOADGEN_CLOSED
                                                   : ECHO_LOADGEN_IO;
    return lg_fail(res, kind, -err, c->idx, c->rx);
}

/* ---- life cycle ------------------------------------------------------------ */

static void make_pattern(echo_loadgen *lg)
{
    uint64_t x = 0x9e3779b97f4a7c15u;
    size_t msg = lg->msg;

    for (size_t i = 0; i < lg->copy_len; i++) {
        uint8_t b;

        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        b = (uint8_t)(x >> 32);
        /* Line and seed mode would treat a newline specially: keep it out,
         * then end each line-mode message with the one newline it needs. */
        if (lg->cfg.mode != ECHO_LOADGEN_RAW && b == '\n')
            b = 'N';
        if (lg->cfg.mode == ECHO_LOADGEN_LINE && i % msg == msg - 1)
            b = '\n';
        lg->pattern[i] = b;
    }
    memcpy(lg->pattern + lg->copy_len, lg->pattern, lg->copy_len);
}

LG_API int echo_loadgen_new(const echo_loadgen_config *cfg, echo_loadgen **out)
{
    echo_loadgen *lg;
    uint32_t variants;
    int prc;

    if (cfg == NULL || out == NULL)
        return -EINVAL;
    if (cfg->connections < 1 || cfg->connections > MAX_CONNECTIONS ||
        cfg->depth < 1 || cfg->depth > MAX_DEPTH || cfg->msg_size < 1 ||
        cfg->msg_size > MAX_MSG || cfg->mode < ECHO_LOADGEN_RAW ||
        cfg->mode > ECHO_LOADGEN_SEED ||
        (cfg->transport != ECHO_LOADGEN_TCP && cfg->transport != ECHO_LOADGEN_UDP) ||
        (cfg->transport == ECHO_LOADGEN_UDP && lgu_check(cfg) != 0))
        return -EINVAL;
    variants = cfg->depth > MIN_VARIANTS ? cfg->depth : MIN_VARIANTS;
    if ((size_t)variants * cfg->msg_size > MAX_PATTERN)
        return -EINVAL;
    lg = calloc(1, sizeof *lg);
    if (lg == NULL)
        return -ENOMEM;
    lg->cfg = *cfg;
    if (lg->cfg.connect_window == 0)
        lg->cfg.connect_window = DEFAULT_WINDOW;
    if (lg->cfg.timeout_ms == 0)
        lg->cfg.timeout_ms = DEFAULT_TIMEOUT_MS;
    if (lg->cfg.loss_timeout_ms == 0)
        lg->cfg.loss_timeout_ms = DEFAULT_LOSS_MS;
    lg->loss_ns = (uint64_t)lg->cfg.loss_timeout_ms * 1000000u;
    lg->msg = cfg->msg_size;
    lg->variants = variants;
    lg->copy_len = (size_t)variants * cfg->msg_size;
    prc = poller_new(&lg->poller);
    lg->pattern = malloc(2 * lg->copy_len);
    lg->conns = calloc(cfg->connections, sizeof *lg->conns);
    lg->sent_ns = calloc((size_t)cfg->connections * cfg->depth, sizeof *lg->sent_ns);
    if (cfg->transport == ECHO_LOADGEN_TCP)
        lg->rbuf = malloc(RECV_CHUNK);
    if (prc != 0 || !lg->pattern || !lg->conns || !lg->sent_ns ||
        (cfg->transport == ECHO_LOADGEN_TCP ? !lg->rbuf : lgu_alloc(lg) != 0)) {
        int rc = prc != 0 ? prc : -ENOMEM;

        echo_loadgen_free(lg);
        return rc;
    }
    for (uint32_t i = 0; i < cfg->connections; i++) {
        lg->conns[i].fd = -1;
        lg->conns[i].idx = i;
    }
    make_pattern(lg);
    reset_run(lg);
    *out = lg;
    return 0;
}

LG_API uint32_t echo_loadgen_open(const echo_loadgen *lg)
{
    return lg == NULL ? 0 : lg->open;
}

LG_API void echo_loadgen_free(echo_loadgen *lg)
{
    if (lg == NULL)
        return;
    if (lg->conns != NULL) {
        for (uint32_t i = 0; i < lg->cfg.connections; i++)
            if (lg->conns[i].fd >= 0)
                close(lg->conns[i].fd);
    }
    poller_free(lg->poller); /* after the fds: nothing is left watched */
    free(lg->pattern);
    free(lg->conns);
    free(lg->sent_ns);
    free(lg->rbuf);
    free(lg->slots);
    free(lg->free_slot);
    free(lg->dgrams);
    free(lg);
}

/* ---- one connection's I/O ------------------------------------------------------ */

/* Where the byte at stream offset s of connection c lives in the pattern. */
static size_t pattern_pos(const echo_loadgen *lg, const lg_conn *c, uint64_t s)
{
    uint64_t k = s / lg->msg;

    return (size_t)((c->idx + k) % lg->variants) * lg->msg + (size_t)(s % lg->msg);
}

int lg_set_interest(echo_loadgen *lg, lg_conn *c, uint32_t want)
{
    int rc;

    if (want == c->events)
        return 0;
    rc = poller_mod(lg->poller, c->fd, c->events, want, c);
    if (rc != 0)
        return rc;
    c->events = want;
    return 0;
}

/* Send what the limit allows; the messages started get their start time. */
static int conn_send(echo_loadgen *lg, lg_conn *c, uint64_t now,
                     echo_loadgen_result *res)
{
    uint32_t want = EV_READ;
    int rc;

    while (c->tx < c->limit) {
        size_t pos = pattern_pos(lg, c, c->tx);
        uint64_t len = c->limit - c->tx;
        uint64_t first, end;
        ssize_t n;

        if (len > 2 * lg->copy_len - pos)
            len = 2 * lg->copy_len - pos;
        n = send(c->fd, lg->pattern + pos, (size_t)len, COMPAT_MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                want |= EV_WRITE;
                break;
            }
            if (errno == EINTR)
                continue;
            return io_fail(res, errno, c);
        }
        /* Messages k with k * msg in [tx, tx + n) start now. */
        first = (c->tx + lg->msg - 1) / lg->msg;
        end = (c->tx + (uint64_t)n + lg->msg - 1) / lg->msg;
        for (uint64_t k = first; k < end; k++)
            lg->sent_ns[(size_t)c->idx * lg->cfg.depth + k % lg->cfg.depth] = now;
        c->tx += (uint64_t)n;
        lg->in_flight += (uint64_t)n;
        if ((uint64_t)n < len) {
            want |= EV_WRITE; /* the socket is full */
            break;
        }
    }
    rc = lg_set_interest(lg, c, want);
    return rc ? lg_fail(res, ECHO_LOADGEN_IO, rc, c->idx, c->rx) : 0;
}

static int verify(echo_loadgen *lg, lg_conn *c, const uint8_t *got, size_t n,
                  echo_loadgen_result *res)
{
    uint64_t s = c->rx;
    size_t done = 0;

    while (done < n) {
        size_t pos = pattern_pos(lg, c, s);
        size_t run = 2 * lg->copy_len - pos;

        if (run > n - done)
            run = n - done;
        if (memcmp(lg->pattern + pos, got + done, run) != 0) {
            size_t i = 0;

            while (lg->pattern[pos + i] == got[done + i])
                i++;
            lg_fail(res, ECHO_LOADGEN_MISMATCH, -EBADMSG, c->idx, s + i);
            res->error_expected = lg->pattern[pos + i];
            res->error_got = got[done + i];
            return -EBADMSG;
        }
        done += run;
        s += run;
    }
    return 0;
}

/* Read what is there, verify it, time the messages it completes and, in
 * the closed loop, let the connection send as many new ones. */
static int conn_recv(echo_loadgen *lg, lg_conn *c, uint64_t now,
                     echo_loadgen_result *res)
{
    uint64_t done_before, done_after;
    ssize_t n;
    int rc;

    n = recv(c->fd, lg->rbuf, RECV_CHUNK, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        return io_fail(res, errno, c);
    }
    if (n == 0)
        return lg_fail(res, ECHO_LOADGEN_CLOSED, -ECONNRESET, c->idx, c->rx);
    if ((uint64_t)n > c->tx - c->rx)
        return lg_fail(res, ECHO_LOADGEN_EXTRA, -EPROTO, c->idx, c->tx);
    rc = verify(lg, c, lg->rbuf, (size_t)n, res);
    if (rc != 0)
        return rc;
    done_before = c->rx / lg->msg;
    c->rx += (uint64_t)n;
    lg->in_flight -= (uint64_t)n;
    lg->bytes += (uint64_t)n;
    lg->last_echo_ns = now;
    done_after = c->rx / lg->msg;
    if (done_after == done_before)
        return 0;
    lg->round_trips += done_after - done_before;
    if (lg->recording) {
        for (uint64_t k = done_before; k < done_after; k++)
            lg_record(lg, now - lg->sent_ns[(size_t)c->idx * lg->cfg.depth + k % lg->cfg.depth]);
    }
    if (lg->running) {
        c->limit = (done_after + lg->cfg.depth) * lg->msg;
        return conn_send(lg, c, now, res);
    }
    return 0;
}

static int conn_event(echo_loadgen *lg, lg_conn *c, uint32_t events,
                      echo_loadgen_result *res)
{
    uint64_t now = lg_now_ns();
    int rc;

    if (events & EV_ERROR)
        events |= EV_READ | EV_WRITE; /* let recv/send report it */
    if ((events & EV_READ) && (rc = conn_recv(lg, c, now, res)) != 0)
        return rc;
    if ((events & EV_WRITE) && c->tx < c->limit)
        return conn_send(lg, c, now, res);
    return 0;
}

/* ---- connecting ------------------------------------------------------------------ */

static int start_connect(echo_loadgen *lg, lg_conn *c, const net_addr *addr,
                         socklen_t len, echo_loadgen_result *res)
{
    int one = 1;
    int fd = lg_socket(addr->sa.sa_family, SOCK_STREAM);
    int rc;

    if (fd < 0)
        return lg_fail(res, ECHO_LOADGEN_CONNECT, fd, c->idx, 0);
    /* Like the servers: requests go out as they are made. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    lg->open++;
    if (connect(fd, &addr->sa, len) != 0 && errno != EINPROGRESS)
        return lg_fail(res, ECHO_LOADGEN_CONNECT, -errno, c->idx, 0);
    rc = poller_add(lg->poller, fd, EV_WRITE, c);
    if (rc != 0)
        return lg_fail(res, ECHO_LOADGEN_IO, rc, c->idx, 0);
    c->events = EV_WRITE;
    c->state = LG_CONNECTING;
    return 0;
}

/* The connection is writable: did it connect? Then send the first message. */
static int finish_connect(echo_loadgen *lg, lg_conn *c, echo_loadgen_result *res)
{
    int err = 0;
    socklen_t errlen = sizeof err;

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0)
        err = errno;
    if (err != 0)
        return lg_fail(res, ECHO_LOADGEN_CONNECT, -err, c->idx, 0);
    c->state = LG_OPEN;
    c->limit = lg->msg;
    c->events = EV_WRITE; /* what the poller watches: conn_send sets it right */
    return conn_send(lg, c, lg_now_ns(), res);
}

static int open_conn(echo_loadgen *lg, lg_conn *c, const net_addr *addr,
                     socklen_t len, echo_loadgen_result *res)
{
    if (lg->cfg.transport == ECHO_LOADGEN_UDP)
        return lgu_open(lg, c, addr, len, res);
    return start_connect(lg, c, addr, len, res);
}

static int on_event(echo_loadgen *lg, lg_conn *c, uint32_t events,
                    echo_loadgen_result *res)
{
    if (lg->cfg.transport == ECHO_LOADGEN_UDP)
        return lgu_event(lg, c, events, res);
    if (c->state == LG_CONNECTING)
        return finish_connect(lg, c, res);
    return conn_event(lg, c, events, res);
}

static int wait_ms(uint64_t ns)
{
    uint64_t ms = (ns + 999999u) / 1000000u;

    return ms > 3600000u ? 3600000 : (int)ms;
}

LG_API int echo_loadgen_connect(echo_loadgen *lg, const char *host, int port,
                         echo_loadgen_result *res)
{
    uint32_t n_conns, next = 0, pending = 0, ready = 0;
    uint64_t timeout_ns, last_progress;
    net_addr addr;
    socklen_t addrlen;
    int rc;

    if (res == NULL)
        return -EINVAL;
    memset(res, 0, sizeof *res);
    if (lg == NULL || host == NULL)
        return lg_fail(res, ECHO_LOADGEN_USAGE, -EINVAL, 0, 0);
    if (lg->open != 0)
        return lg_fail(res, ECHO_LOADGEN_USAGE, -EISCONN, 0, 0);
    rc = net_resolve(host, port, &addr, &addrlen);
    if (rc != 0)
        return lg_fail(res, ECHO_LOADGEN_CONNECT, rc, 0, 0);
    n_conns = lg->cfg.connections;
    timeout_ns = (uint64_t)lg->cfg.timeout_ms * 1000000u;
    lg->running = lg->recording = 0;
    last_progress = lg_now_ns();
    while (ready < n_conns) {
        int n;
        uint64_t now;

        while (pending < lg->cfg.connect_window && next < n_conns) {
            rc = open_conn(lg, &lg->conns[next++], &addr, addrlen, res);
            if (rc != 0)
                return rc;
            pending++;
        }
        n = poller_wait(lg->poller, lg->events, LG_MAX_EVENTS, wait_ms(timeout_ns));
        if (n < 0)
            return lg_fail(res, ECHO_LOADGEN_IO, n, 0, 0);
        now = lg_now_ns();
        if (n > 0)
            last_progress = now;
        else if (now - last_progress >= timeout_ns)
            return lg_fail(res, ECHO_LOADGEN_TIMEOUT, -ETIMEDOUT, next - pending, 0);
        for (int i = 0; i < n; i++) {
            lg_conn *c = lg->events[i].ptr;
            uint64_t was = c->rx;

            rc = on_event(lg, c, lg->events[i].ready, res);
            if (rc != 0)
                return rc;
            if (was < lg->msg && c->rx == lg->msg) {
                ready++; /* its first round trip is done */
                pending--;
            }
        }
    }
    reset_run(lg);
    return 0;
}

/* ---- the closed loop --------------------------------------------------------------- */

LG_API int echo_loadgen_run(echo_loadgen *lg, uint32_t duration_ms, echo_loadgen_result *res)
{
    uint64_t start, deadline, timeout_ns, last_progress;
    uint32_t n_conns;
    int rc = 0;

    if (res == NULL)
        return -EINVAL;
    memset(res, 0, sizeof *res);
    if (lg == NULL)
        return lg_fail(res, ECHO_LOADGEN_USAGE, -EINVAL, 0, 0);
    n_conns = lg->cfg.connections;
    if (lg->open != n_conns || lg->in_flight != 0 ||
        lg->conns[n_conns - 1].state != LG_OPEN)
        return lg_fail(res, ECHO_LOADGEN_USAGE, -ENOTCONN, 0, 0);
    reset_run(lg);
    timeout_ns = (uint64_t)lg->cfg.timeout_ms * 1000000u;
    start = last_progress = lg_now_ns();
    lg->last_echo_ns = start;
    deadline = start + (uint64_t)duration_ms * 1000000u;
    lg->running = lg->recording = 1;
    lg->next_scan_ns = start + lg->loss_ns / 4;
    for (uint32_t i = 0; i < n_conns && rc == 0; i++) {
        lg_conn *c = &lg->conns[i];

        if (lg->cfg.transport == ECHO_LOADGEN_UDP) {
            rc = lgu_send(lg, c, UINT32_MAX, lg_now_ns(), res);
            continue;
        }
        c->limit = (c->rx / lg->msg + lg->cfg.depth) * lg->msg;
        rc = conn_send(lg, c, lg_now_ns(), res);
    }
    while (rc == 0) {
        uint64_t now = lg_now_ns();
        uint64_t wait = timeout_ns;
        int n;

        if (lg->running && now >= deadline) {
            /* Stop starting messages; finish the ones started. */
            lg->running = 0;
            for (uint32_t i = 0; i < n_conns && lg->cfg.transport == ECHO_LOADGEN_TCP; i++) {
                lg_conn *c = &lg->conns[i];

                c->limit = (c->tx + lg->msg - 1) / lg->msg * lg->msg;
            }
        }
        if (!lg->running && lg->in_flight == 0)
            break;
        if (lg->running && deadline - now < wait)
            wait = deadline - now;
        if (lg->cfg.transport == ECHO_LOADGEN_UDP) {
            uint64_t scan = lg->next_scan_ns > now ? lg->next_scan_ns - now : 0;

            if (scan < wait)
                wait = scan; /* time to look for lost datagrams */
        }
        n = poller_wait(lg->poller, lg->events, LG_MAX_EVENTS, wait_ms(wait));
        if (n < 0) {
            rc = lg_fail(res, ECHO_LOADGEN_IO, n, 0, 0);
            break;
        }
        now = lg_now_ns();
        if (n > 0)
            last_progress = now;
        else if (now - last_progress >= timeout_ns) {
            rc = lg_fail(res, ECHO_LOADGEN_TIMEOUT, -ETIMEDOUT, 0, 0);
            break;
        }
        for (int i = 0; i < n && rc == 0; i++)
            rc = on_event(lg, lg->events[i].ptr, lg->events[i].ready, res);
        if (rc == 0 && lg->cfg.transport == ECHO_LOADGEN_UDP)
            rc = lgu_expire(lg, now, res);
    }
    lg->running = lg->recording = 0;
    res->round_trips = lg->round_trips;
    res->bytes = lg->bytes;
    res->lost = lg->lost;
    res->late = lg->late;
    res->elapsed_ns = lg->last_echo_ns - start;
    res->lat_count = lg->lat_count;
    res->lat_min_ns = lg->lat_count ? lg->lat_min : 0;
    res->lat_mean_ns = lg->lat_count ? lg->lat_sum / lg->lat_count : 0;
    res->lat_max_ns = lg->lat_max;
    res->lat_p50_ns = echo_loadgen_percentile(lg, 0.50);
    res->lat_p90_ns = echo_loadgen_percentile(lg, 0.90);
    res->lat_p99_ns = echo_loadgen_percentile(lg, 0.99);
    res->lat_p999_ns = echo_loadgen_percentile(lg, 0.999);
    return rc;
}
