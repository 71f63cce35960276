/*
 * udp.c - see udp.h. pyecho/_pyudp.py is the same logic in Python: the same
 * guard, the same integer token buckets, the same source table and hash, so
 * both engines drop exactly the same datagrams.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "compat.h"
#include "faults.h"
#include "udp.h"

#define BATCH 32            /* datagrams per recvmmsg()/sendmmsg() */
#define BATCHES 8           /* batches per readiness event, for fairness */
#define DGRAM_MAX 65536     /* more than any UDP payload (65,527 bytes) */
#define SOURCES 4096        /* per-source buckets: a fixed table */
#define MILLI 1000u         /* bucket tokens are thousandths of a datagram */
#define REPORT_EVERY_MS 1000

/* Ports of services that answer whatever they receive, or amplify it: an
 * echo to one of them could start an endless loop (CVE-1999-0103) or
 * reflect a spoofed flood. The BSD inetds refuse these too. */
static const uint16_t guarded_ports[] = {
    7, 9, 13, 17, 19, 37, 53, 111, 123, 137, 161, 389, 520, 1900, 3702, 5353, 5683, 11211,
};

/* A token bucket: `rate` datagrams per second, a burst of one second's. */
typedef struct bucket {
    uint64_t tokens; /* in thousandths of a datagram */
    uint64_t last_ms;
} bucket;

typedef struct source {
    uint8_t key[18]; /* IPv6 (or IPv4-mapped) address, then the port */
    int used;
    bucket b;
} source;

struct udp_echo {
    echo_config cfg;
    counters *stats;
    udp_drop_fn on_drop;
    void *ctx;
    bucket global;
    source *sources;    /* SOURCES of them, NULL without a per-source limit */
    uint64_t next_report_ms[ECHO_DROP_REASONS];
    uint64_t unreported[ECHO_DROP_REASONS];
    const echo_faults *faults; /* NULL: none */
    uint64_t rng;
    fx_queue delayed;   /* echoes held by latency, each with its address */
    uint8_t *bufs;      /* BATCH x DGRAM_MAX */
    struct mmsghdr in[BATCH], out[2 * BATCH]; /* a duplicate is a second echo */
    struct iovec in_iov[BATCH], out_iov[2 * BATCH];
    net_addr from[BATCH];
    fx_chunk *sending[BATCH]; /* released chunks in the out batch */
};

/* ---- the guard ------------------------------------------------------------ */

static int v4_unanswerable(const uint8_t a[4])
{
    /* multicast 224/4, limited broadcast, "this host" 0/8 */
    return (a[0] & 0xf0) == 224 || (a[0] == 255 && a[1] == 255 && a[2] == 255 && a[3] == 255) ||
           a[0] == 0;
}

int udp_guarded(const net_addr *src)
{
    int port;

    if (src->sa.sa_family == AF_INET) {
        port = ntohs(src->in4.sin_port);
        if (v4_unanswerable((const uint8_t *)&src->in4.sin_addr))
            return 1;
    } else if (src->sa.sa_family == AF_INET6) {
        const uint8_t *a = src->in6.sin6_addr.s6_addr;

        port = ntohs(src->in6.sin6_port);
        if (a[0] == 0xff || IN6_IS_ADDR_UNSPECIFIED(&src->in6.sin6_addr))
            return 1;
        if (IN6_IS_ADDR_V4MAPPED(&src->in6.sin6_addr) && v4_unanswerable(a + 12))
            return 1;
    } else {
        return 1;
    }
    if (port == 0)
        return 1;
    for (size_t i = 0; i < sizeof guarded_ports / sizeof guarded_ports[0]; i++) {
        if (port == guarded_ports[i])
            return 1;
    }
    return 0;
}

/* ---- rate limits: integer token buckets ------------------------------------ */

static int take(bucket *b, uint32_t rate, uint64_t now_ms)
{
    uint64_t cap = (uint64_t)rate * MILLI;
    uint64_t elapsed = now_ms - b->last_ms;

    /* A second refills it whole: no need to multiply (or overflow) more. */
    b->tokens = elapsed >= 1000 ? cap : b->tokens + elapsed * rate;
    if (b->tokens > cap)
        b->tokens = cap;
    b->last_ms = now_ms;
    if (b->tokens < MILLI)
        return 0;
    b->tokens -= MILLI;
    return 1;
}

/* The source's key: its address as IPv6 (IPv4 mapped) and its port. */
static void source_key(const net_addr *src, uint8_t key[18])
{
    memset(key, 0, 18);
    if (src->sa.sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &src->in4.sin_addr, 4);
        memcpy(key + 16, &src->in4.sin_port, 2);
    } else {
        memcpy(key, &src->in6.sin6_addr, 16);
        memcpy(key + 16, &src->in6.sin6_port, 2);
    }
}

/* FNV-1a: cheap, and the Python engine computes the same slot. */
static size_t source_slot(const uint8_t key[18])
{
    uint64_t h = 14695981039346656037ull;

    for (int i = 0; i < 18; i++) {
        h ^= key[i];
        h *= 1099511628211ull;
    }
    return (size_t)(h % SOURCES);
}

/* One bucket per table slot: a new source takes its slot over with a full
 * bucket, so the table stays bounded whatever the number of sources (the
 * global limit bounds the rest). */
static bucket *source_bucket(udp_echo *u, const net_addr *src, uint64_t now_ms)
{
    uint8_t key[18];
    source *s;

    source_key(src, key);
    s = &u->sources[source_slot(key)];
    if (!s->used || memcmp(s->key, key, sizeof key) != 0) {
        memcpy(s->key, key, sizeof key);
        s->used = 1;
        s->b.tokens = (uint64_t)u->cfg.udp_rate_per_source * MILLI;
        s->b.last_ms = now_ms;
    }
    return &s->b;
}

/* ---- dropping ------------------------------------------------------------- */

static void drop(udp_echo *u, int reason, const net_addr *src, uint64_t n, uint64_t now_ms)
{
    count(&u->stats->dropped[reason], n);
    u->unreported[reason] += n;
    if (u->on_drop != NULL && now_ms >= u->next_report_ms[reason]) {
        u->on_drop(u->ctx, reason, src, u->unreported[reason]);
        u->unreported[reason] = 0;
        u->next_report_ms[reason] = now_ms + REPORT_EVERY_MS;
    }
}

/* Should this datagram be echoed? Guard first, then the source's limit, then
 * the global one (a datagram over its source's limit spends no global token). */
static int admit(udp_echo *u, const net_addr *src, uint64_t now_ms)
{
    if (u->cfg.udp_guard && udp_guarded(src)) {
        drop(u, ECHO_DROP_GUARD, src, 1, now_ms);
        return 0;
    }
    if (u->sources != NULL && !take(source_bucket(u, src, now_ms), u->cfg.udp_rate_per_source, now_ms)) {
        drop(u, ECHO_DROP_RATE_SOURCE, src, 1, now_ms);
        return 0;
    }
    if (u->cfg.udp_rate != 0 && !take(&u->global, u->cfg.udp_rate, now_ms)) {
        drop(u, ECHO_DROP_RATE_GLOBAL, src, 1, now_ms);
        return 0;
    }
    return 1;
}

/* ---- echoing ---------------------------------------------------------------- */

/* Send the m queued echoes. A full send buffer drops the rest (a datagram
 * service must not block or queue without bound); a datagram that cannot be
 * sent (too big for the route, no route) is dropped alone. */
static void send_batch(udp_echo *u, int fd, int m, uint64_t now_ms)
{
    int i = 0;

    while (i < m) {
        int n = compat_sendmmsg(fd, u->out + i, (unsigned)(m - i),
                                MSG_DONTWAIT | COMPAT_MSG_NOSIGNAL);

        if (n > 0) {
            for (int k = i; k < i + n; k++)
                count(&u->stats->bytes_out, u->out[k].msg_len);
            count(&u->stats->datagrams_out, (uint64_t)n);
            i += n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            drop(u, ECHO_DROP_FULL, u->out[i].msg_hdr.msg_name, (uint64_t)(m - i), now_ms);
            return;
        }
        drop(u, ECHO_DROP_ERROR, u->out[i].msg_hdr.msg_name, 1, now_ms);
        i++;
    }
}

/* Queue one echo in the out batch. */
static void out_add(udp_echo *u, int m, void *data, size_t len, const net_addr *to)
{
    u->out_iov[m].iov_base = data;
    u->out_iov[m].iov_len = len;
    u->out[m].msg_hdr.msg_name = (void *)to;
    u->out[m].msg_hdr.msg_namelen = net_addr_len(to);
}

/* Faults on an admitted datagram: drop it, or hold its echo (one or two,
 * duplicated) for latency. Returns how many echoes go out now (0, 1, 2).
 * Draws come in this order: drop, duplicate, delay. */
static int fault(udp_echo *u, const uint8_t *data, size_t len, const net_addr *src,
                 uint64_t now_ms)
{
    const echo_faults *f = u->faults;
    int copies;

    if (f == NULL)
        return 1;
    if (fx_chance(&u->rng, f->drop_ppm)) {
        drop(u, ECHO_DROP_FAULT, src, 1, now_ms);
        return 0;
    }
    copies = 1 + fx_chance(&u->rng, f->duplicate_ppm);
    if (f->latency_ms == 0 && f->jitter_ms == 0)
        return copies;
    uint64_t due = now_ms + fx_delay(&u->rng, f);
    for (int i = 0; i < copies; i++) {
        /* Held echo is bounded like a TCP connection's queue. */
        if (u->delayed.cost + len + FX_CHUNK_COST > u->cfg.max_pending ||
            fx_queue_push(&u->delayed, due, data, len, src, 0) != 0)
            drop(u, ECHO_DROP_FULL, src, 1, now_ms);
    }
    return 0;
}

void udp_echo_readable(udp_echo *u, int fd, uint64_t now_ms)
{
    for (int batch = 0; batch < BATCHES; batch++) {
        int n, m = 0;

        for (int i = 0; i < BATCH; i++) {
            u->in[i].msg_hdr.msg_namelen = sizeof u->from[i];
            u->in[i].msg_hdr.msg_flags = 0;
        }
        n = compat_recvmmsg(fd, u->in, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return; /* EAGAIN: all done; errors of earlier sends: nothing to do */
        for (int i = 0; i < n; i++) {
            const net_addr *src = &u->from[i];
            size_t len = u->in[i].msg_len;
            int copies;

            count(&u->stats->datagrams_in, 1);
            count(&u->stats->bytes_in, len);
            if (!admit(u, src, now_ms))
                continue;
            copies = fault(u, u->in_iov[i].iov_base, len, src, now_ms);
            while (copies-- > 0)
                out_add(u, m++, u->in_iov[i].iov_base, len, src);
        }
        send_batch(u, fd, m, now_ms);
        if (n < BATCH)
            return;
    }
}

uint64_t udp_echo_due(const udp_echo *u)
{
    return u->delayed.head != NULL ? u->delayed.head->due_ms : UINT64_MAX;
}

uint64_t udp_echo_release(udp_echo *u, int fd, uint64_t now_ms)
{
    while (u->delayed.head != NULL && u->delayed.head->due_ms <= now_ms) {
        int m = 0;

        while (m < BATCH && u->delayed.head != NULL && u->delayed.head->due_ms <= now_ms) {
            fx_chunk *c = fx_queue_pop(&u->delayed);

            u->sending[m] = c;
            out_add(u, m++, c->data, c->len, &c->to);
        }
        send_batch(u, fd, m, now_ms);
        for (int i = 0; i < m; i++)
            free(u->sending[i]);
    }
    return udp_echo_due(u);
}

void udp_echo_set_faults(udp_echo *u, const echo_faults *f, int fd, uint64_t now_ms)
{
    u->faults = f;
    u->rng = fx_rng_seed(f != NULL ? f->seed : 0, 0);
    fx_queue_hurry(&u->delayed, f == NULL ? now_ms : now_ms + f->latency_ms + f->jitter_ms);
    udp_echo_release(u, fd, now_ms);
}

/* ---- life cycle ------------------------------------------------------------- */

int udp_echo_new(const echo_config *cfg, counters *stats, udp_drop_fn on_drop,
                 void *ctx, udp_echo **out)
{
    udp_echo *u = calloc(1, sizeof *u);

    if (u == NULL)
        return -ENOMEM;
    u->cfg = *cfg;
    u->cfg.quit_word = NULL; /* not used over UDP; not ours to keep */
    u->stats = stats;
    u->on_drop = on_drop;
    u->ctx = ctx;
    u->bufs = malloc((size_t)BATCH * DGRAM_MAX);
    if (cfg->udp_rate_per_source != 0)
        u->sources = calloc(SOURCES, sizeof *u->sources);
    if (u->bufs == NULL || (cfg->udp_rate_per_source != 0 && u->sources == NULL)) {
        udp_echo_free(u);
        return -ENOMEM;
    }
    for (int i = 0; i < BATCH; i++) {
        u->in_iov[i].iov_base = u->bufs + (size_t)i * DGRAM_MAX;
        u->in_iov[i].iov_len = DGRAM_MAX;
        u->in[i].msg_hdr.msg_name = &u->from[i];
        u->in[i].msg_hdr.msg_iov = &u->in_iov[i];
        u->in[i].msg_hdr.msg_iovlen = 1;
    }
    for (int i = 0; i < 2 * BATCH; i++) {
        u->out[i].msg_hdr.msg_iov = &u->out_iov[i];
        u->out[i].msg_hdr.msg_iovlen = 1;
    }
    *out = u;
    return 0;
}

void udp_echo_free(udp_echo *u)
{
    if (u == NULL)
        return;
    fx_queue_free(&u->delayed);
    free(u->bufs);
    free(u->sources);
    free(u);
}
