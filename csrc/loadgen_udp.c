/*
 * loadgen_udp.c - the load generator over UDP (see pyecho_loadgen.h):
 * connected sockets, datagrams sent and received in batches, every echo
 * verified, nothing retransmitted.
 *
 * Datagram k of socket i is an 8-byte tag (i << 40 | k, in host order: only
 * this process reads it) followed by bytes 8.. of pattern variant
 * (i + k) mod V, so sending is two iovecs and no copy, and checking an echo
 * is one memcmp.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loadgen.h"

#define TAG_BYTES 8
#define SEQ_BITS 40
#define SEQ_MASK ((UINT64_C(1) << SEQ_BITS) - 1)
#define MAX_DATAGRAM 65507u /* the most UDP carries over IPv4 */
#define MAX_SOCKETS (1u << (64 - SEQ_BITS))
#define UNKNOWN UINT64_MAX

/* compat_sendmmsg() and compat_recvmmsg(): batched where the system can,
 * else one sendmsg() or recvmsg() per datagram. A datagram longer than its
 * buffer (MSG_TRUNC in msg_flags, the same everywhere) counts as one byte
 * longer than the buffer: take() sees a wrong size. */
static int send_batch(int fd, struct mmsghdr *v, unsigned n, int flags)
{
    return compat_sendmmsg(fd, v, n, flags);
}

static int recv_batch(int fd, struct mmsghdr *v, unsigned n, int flags)
{
    for (unsigned i = 0; i < n; i++)
        v[i].msg_hdr.msg_flags = 0;
    int got = compat_recvmmsg(fd, v, n, flags, NULL);
    for (int i = 0; i < got; i++) {
        if (v[i].msg_hdr.msg_flags & MSG_TRUNC)
            v[i].msg_len = (unsigned)v[i].msg_hdr.msg_iov[0].iov_len + 1;
    }
    return got;
}

static uint64_t make_tag(uint32_t idx, uint64_t seq)
{
    return (uint64_t)idx << SEQ_BITS | (seq & SEQ_MASK);
}

int lgu_check(const echo_loadgen_config *cfg)
{
    if (cfg->mode != ECHO_LOADGEN_RAW || cfg->msg_size < TAG_BYTES ||
        cfg->msg_size > MAX_DATAGRAM || cfg->connections > MAX_SOCKETS ||
        cfg->depth > UINT16_MAX)
        return -EINVAL;
    return 0;
}

int lgu_alloc(echo_loadgen *lg)
{
    size_t n = (size_t)lg->cfg.connections * lg->cfg.depth;
    uint32_t depth = lg->cfg.depth;

    lg->slots = calloc(n, sizeof *lg->slots);
    lg->free_slot = calloc(n, sizeof *lg->free_slot);
    lg->dgrams = malloc((size_t)LG_BATCH * lg->msg);
    if (!lg->slots || !lg->free_slot || !lg->dgrams)
        return -ENOMEM;
    for (uint32_t i = 0; i < lg->cfg.connections; i++) {
        lg->conns[i].nfree = depth;
        for (uint32_t j = 0; j < depth; j++) {
            lg_slot *s = &lg->slots[(size_t)i * depth + j];

            s->seq = j;
            s->lost_seq = UNKNOWN;
            /* Slot 0 on top of the stack: the first datagram is number 0. */
            lg->free_slot[(size_t)i * depth + j] = (uint16_t)(depth - 1 - j);
        }
    }
    for (int k = 0; k < LG_BATCH; k++) {
        lg->in_iov[k].iov_base = lg->dgrams + (size_t)k * lg->msg;
        lg->in_iov[k].iov_len = lg->msg;
        lg->in[k].msg_hdr.msg_iov = &lg->in_iov[k];
        lg->in[k].msg_hdr.msg_iovlen = 1;
        lg->out_iov[k][0].iov_base = &lg->out_tag[k];
        lg->out_iov[k][0].iov_len = TAG_BYTES;
        lg->out_iov[k][1].iov_len = lg->msg - TAG_BYTES;
        lg->out[k].msg_hdr.msg_iov = lg->out_iov[k];
        lg->out[k].msg_hdr.msg_iovlen = lg->msg > TAG_BYTES ? 2 : 1;
    }
    return 0;
}

/* Where the bytes after the tag of datagram seq of connection c are. */
static const uint8_t *payload(const echo_loadgen *lg, const lg_conn *c, uint64_t seq)
{
    return lg->pattern + (size_t)((c->idx + seq) % lg->variants) * lg->msg + TAG_BYTES;
}

/* A failed socket call: a refused datagram (ICMP port unreachable) means
 * nothing listens: before any echo the connection failed, after one the
 * server went away. */
static int udp_fail(echo_loadgen_result *res, int err, const lg_conn *c)
{
    int kind = ECHO_LOADGEN_IO;

    if (err == ECONNREFUSED)
        kind = c->rx == 0 ? ECHO_LOADGEN_CONNECT : ECHO_LOADGEN_CLOSED;
    lg_fail(res, kind, -err, c->idx, 0);
    if (res != NULL)
        res->error_datagram = UNKNOWN;
    return -err;
}

int lgu_open(echo_loadgen *lg, lg_conn *c, const net_addr *addr, socklen_t len,
             echo_loadgen_result *res)
{
    int fd = lg_socket(addr->sa.sa_family, SOCK_DGRAM);
    int rc;

    if (fd < 0)
        return lg_fail(res, ECHO_LOADGEN_CONNECT, fd, c->idx, 0);
    c->fd = fd;
    lg->open++;
    if (connect(fd, &addr->sa, len) != 0)
        return lg_fail(res, ECHO_LOADGEN_CONNECT, -errno, c->idx, 0);
    rc = poller_add(lg->poller, fd, EV_READ, c);
    if (rc != 0)
        return lg_fail(res, ECHO_LOADGEN_IO, rc, c->idx, 0);
    c->events = EV_READ;
    c->state = LG_OPEN;
    return lgu_send(lg, c, 1, lg_now_ns(), res);
}

int lgu_send(echo_loadgen *lg, lg_conn *c, uint32_t max, uint64_t now,
             echo_loadgen_result *res)
{
    uint32_t depth = lg->cfg.depth;
    uint16_t *stack = lg->free_slot + (size_t)c->idx * depth;
    lg_slot *slots = lg->slots + (size_t)c->idx * depth;
    uint32_t want = EV_READ;
    int rc;

    while (max > 0 && c->nfree > 0) {
        uint32_t k = c->nfree < LG_BATCH ? c->nfree : LG_BATCH;
        int n;

        if (k > max)
            k = max;
        /* The top k free slots, top first: sent ones are popped below. */
        for (uint32_t m = 0; m < k; m++) {
            uint64_t seq = slots[stack[c->nfree - 1 - m]].seq;

            lg->out_tag[m] = make_tag(c->idx, seq);
            lg->out_iov[m][1].iov_base = (void *)payload(lg, c, seq);
        }
        n = send_batch(c->fd, lg->out, k, MSG_DONTWAIT | COMPAT_MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                want |= EV_WRITE; /* the socket is full: go on when it is not */
                break;
            }
            return udp_fail(res, errno, c);
        }
        for (int m = 0; m < n; m++) {
            uint16_t j = stack[--c->nfree];

            slots[j].busy = 1;
            lg->sent_ns[(size_t)c->idx * depth + j] = now;
        }
        c->tx += (uint64_t)n * lg->msg;
        lg->in_flight += (uint64_t)n * lg->msg;
        max -= (uint32_t)n;
        if ((uint32_t)n < k) {
            want |= EV_WRITE;
            break;
        }
    }
    rc = lg_set_interest(lg, c, want);
    return rc ? lg_fail(res, ECHO_LOADGEN_IO, rc, c->idx, 0) : 0;
}

/* The slot's datagram is done (echoed or lost): free the slot for the next. */
static void release(echo_loadgen *lg, lg_conn *c, uint16_t j)
{
    lg_slot *s = &lg->slots[(size_t)c->idx * lg->cfg.depth + j];

    s->busy = 0;
    s->seq += lg->cfg.depth;
    lg->free_slot[(size_t)c->idx * lg->cfg.depth + c->nfree++] = j;
    lg->in_flight -= lg->msg;
}

static int mismatch(echo_loadgen_result *res, const lg_conn *c, uint64_t seq, size_t size,
                    size_t at, uint8_t expected, uint8_t got)
{
    lg_fail(res, ECHO_LOADGEN_MISMATCH, -EBADMSG, c->idx, at);
    res->error_datagram = seq;
    res->error_size = size;
    res->error_expected = expected;
    res->error_got = got;
    return -EBADMSG;
}

/* Check one echoed datagram of len bytes and account for it. */
static int take(echo_loadgen *lg, lg_conn *c, const uint8_t *d, size_t len, uint64_t now,
                echo_loadgen_result *res)
{
    uint32_t depth = lg->cfg.depth;
    uint64_t tag, seq, expect;
    uint16_t j;
    lg_slot *s;

    if (len < TAG_BYTES)
        return mismatch(res, c, UNKNOWN, len, len, 0, 0);
    memcpy(&tag, d, TAG_BYTES);
    seq = tag & SEQ_MASK;
    j = (uint16_t)(seq % depth);
    s = &lg->slots[(size_t)c->idx * depth + j];
    if (len != lg->msg)
        return mismatch(res, c, seq, len, len < lg->msg ? len : lg->msg, 0, 0);
    /* A tag this socket never sent: the tag itself was changed. Say where it
     * differs from the tag the slot it names holds. */
    expect = make_tag(c->idx, s->seq);
    if (tag >> SEQ_BITS != c->idx || seq > s->seq || (seq == s->seq && !s->busy)) {
        const uint8_t *e = (const uint8_t *)&expect;
        size_t i = 0;

        while (i < TAG_BYTES - 1 && e[i] == d[i])
            i++;
        return mismatch(res, c, UNKNOWN, len, i, e[i], d[i]);
    }
    if (memcmp(d + TAG_BYTES, payload(lg, c, seq), len - TAG_BYTES) != 0) {
        const uint8_t *p = payload(lg, c, seq);
        size_t i = 0;

        while (p[i] == d[TAG_BYTES + i])
            i++;
        return mismatch(res, c, seq, len, TAG_BYTES + i, p[i], d[TAG_BYTES + i]);
    }
    if (seq != s->seq) { /* an older one: lost earlier, or a second echo */
        if (seq == s->lost_seq) {
            s->lost_seq = UNKNOWN;
            lg->late++;
            return 0;
        }
        lg_fail(res, ECHO_LOADGEN_EXTRA, -EPROTO, c->idx, 0);
        res->error_datagram = seq;
        res->error_size = len;
        return -EPROTO;
    }
    if (lg->recording)
        lg_record(lg, now - lg->sent_ns[(size_t)c->idx * depth + j]);
    lg->round_trips++;
    lg->bytes += len;
    lg->last_echo_ns = now;
    c->rx += len;
    release(lg, c, j);
    return 0;
}

/* Read every datagram waiting, in batches; then, in the closed loop, send as
 * many new ones as came back. */
static int udp_recv(echo_loadgen *lg, lg_conn *c, uint64_t now, echo_loadgen_result *res)
{
    for (;;) {
        int n;

        n = recv_batch(c->fd, lg->in, LG_BATCH, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return udp_fail(res, errno, c);
        }
        for (int k = 0; k < n; k++) {
            int rc = take(lg, c, lg->in_iov[k].iov_base, lg->in[k].msg_len, now, res);

            if (rc != 0)
                return rc;
        }
        if (n < LG_BATCH)
            break;
    }
    return lg->running ? lgu_send(lg, c, UINT32_MAX, now, res) : 0;
}

int lgu_event(echo_loadgen *lg, lg_conn *c, uint32_t events, echo_loadgen_result *res)
{
    uint64_t now = lg_now_ns();
    int rc;

    if (events & (EV_ERROR | EV_READ)) { /* recvmmsg reports a pending error */
        rc = udp_recv(lg, c, now, res);
        if (rc != 0)
            return rc;
    }
    if (events & EV_WRITE) /* room again: the window, or a first datagram */
        return lgu_send(lg, c, lg->running ? UINT32_MAX : c->tx == 0, now, res);
    return 0;
}

int lgu_expire(echo_loadgen *lg, uint64_t now, echo_loadgen_result *res)
{
    uint32_t depth = lg->cfg.depth;

    if (now < lg->next_scan_ns)
        return 0;
    lg->next_scan_ns = now + lg->loss_ns / 4;
    for (uint32_t i = 0; i < lg->cfg.connections; i++) {
        lg_conn *c = &lg->conns[i];
        uint32_t lost = 0;

        if (c->nfree == depth)
            continue;
        for (uint32_t j = 0; j < depth; j++) {
            lg_slot *s = &lg->slots[(size_t)i * depth + j];

            /* (sent after now is possible: now was read before the events) */
            if (s->busy && lg->sent_ns[(size_t)i * depth + j] + lg->loss_ns <= now) {
                s->lost_seq = s->seq;
                release(lg, c, (uint16_t)j);
                lost++;
            }
        }
        lg->lost += lost;
        if (lost > 0 && lg->running) {
            int rc = lgu_send(lg, c, UINT32_MAX, now, res);

            if (rc != 0)
                return rc;
        }
    }
    return 0;
}
