/*
 * udp.c - see udp.h. pyecho/_pyudp.py is the same logic in Python: the same
 * guard, the same loop detection, the same integer token buckets and the same
 * source table, so both engines drop the same kinds of datagrams (each with
 * its own random key for the table, so not the same slots).
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
#define SOURCES 4096        /* per-source state: a fixed table */
#define MILLI 1000u         /* bucket tokens are thousandths of a datagram */
#define REPORT_EVERY_MS 1000
#define QUIET_MS 1000       /* a source silent this long gives its slot up */
#define LOOP_GAP_MS 500     /* returns further apart than this are no loop */
/* The loop detector (docs/SECURITY.md, "Loops"): per source, up to LOOP_K
 * fingerprints of echoes sent to it, those whose top `level` bits are zero
 * ("sampled"). */
#define LOOP_K 8
#define LOOP_LEVEL_MAX 48   /* sampling stops halving here */
#define LOOP_SPAN 32        /* sampled: a run of LOOP_SPAN << level at least */
#define LOOP_HITS 16        /* sampled returns in a run before it is a loop */
#define LOOP_DRY 32         /* 4 x LOOP_K: no return for LOOP_DRY << level: restart */

/* Source ports never answered. Every port below 512, as OpenBSD's inetd
 * refuses them: the small services that answer anything (echo 7, discard 9,
 * systat 11, daytime 13, qotd 17, chargen 19, time 37), DNS 53, TFTP 69,
 * portmap 111, NTP 123, NetBIOS 137 and 138, SNMP 161, CLDAP 389 and QUIC
 * 443 among them (CVE-1999-0103, CVE-2024-2169); and above it the ones
 * named here. An echo to one of them could start an endless loop or reflect
 * a spoofed flood. */
static const uint16_t guarded_ports[] = {520, 1900, 2049, 3702, 5353, 5683, 11211};
#define GUARDED_BELOW 512

/* A token bucket: `rate` datagrams per second, a burst of one second's. */
typedef struct bucket {
    uint64_t tokens; /* in thousandths of a datagram */
    uint64_t last_ms;
} bucket;

/* What the server knows of one source (address and port). */
typedef struct source {
    uint8_t key[18];  /* IPv6 (or IPv4-mapped) address, then the port */
    uint8_t used;
    uint8_t level;    /* fingerprints kept: those with `level` top bits zero */
    uint8_t nfp;      /* how many in fps */
    uint8_t tripped;  /* taken for a loop: dropped until the run ends */
    uint32_t hits;    /* sampled returns in the run */
    uint64_t run;     /* datagrams since the last sampled one that was new */
    uint64_t dry;     /* datagrams since the last sampled return */
    uint64_t seen_ms; /* its last datagram */
    uint64_t fps[LOOP_K]; /* sampled fingerprints of echoes sent to it */
    bucket b;
    uint64_t contended_ms; /* the slot's: when a source last found it held */
} source;

typedef union ctl_buf {
    struct cmsghdr align;
    uint8_t bytes[NET_PKTINFO_SPACE];
} ctl_buf;

struct udp_echo {
    echo_config cfg;
    counters *stats;
    udp_drop_fn on_drop;
    void *ctx;
    bucket global;
    source *sources;    /* SOURCES of them; NULL without per-source limits */
    source overflow;    /* the sources that find their slot held */
    uint64_t key[2];    /* random, per server: where a source's slot is */
    int family;         /* of the socket */
    int port;           /* the socket's own port */
    int wildcard;       /* bound to 0.0.0.0 or ::: answers name their source */
    net_pktinfo fixed;  /* not wildcard: every datagram's destination */
    uint64_t next_report_ms[ECHO_DROP_REASONS];
    uint64_t unreported[ECHO_DROP_REASONS];
    const echo_faults *faults; /* NULL: none */
    uint64_t rng;
    fx_queue delayed;   /* echoes held by latency, each with its addresses */
    uint8_t *bufs;      /* BATCH x DGRAM_MAX */
    struct mmsghdr in[BATCH], out[2 * BATCH]; /* a duplicate is a second echo */
    struct iovec in_iov[BATCH], out_iov[2 * BATCH];
    net_addr from[BATCH];
    net_pktinfo dst[BATCH];   /* where each datagram was sent */
    ctl_buf in_ctl[BATCH], out_ctl[2 * BATCH];
    int out_dup[2 * BATCH];   /* the second copy of a duplicated datagram */
    fx_chunk *sending[BATCH]; /* released chunks in the out batch */
};

/* ---- hashing ------------------------------------------------------------------ */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                   \
    do {                                                                           \
        v0 += v1, v1 = ROTL(v1, 13), v1 ^= v0, v0 = ROTL(v0, 32);                  \
        v2 += v3, v3 = ROTL(v3, 16), v3 ^= v2;                                     \
        v0 += v3, v3 = ROTL(v3, 21), v3 ^= v0;                                     \
        v2 += v1, v1 = ROTL(v1, 17), v1 ^= v2, v2 = ROTL(v2, 32);                  \
    } while (0)

static uint64_t load64le(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* SipHash-2-4 (Aumasson and Bernstein): with a secret key, where a source's
 * slot is cannot be predicted, so sources cannot be forged to collide. */
static uint64_t siphash24(const uint64_t k[2], const uint8_t *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ k[0], v1 = 0x646f72616e646f6dull ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ k[0], v3 = 0x7465646279746573ull ^ k[1];
    uint64_t b = (uint64_t)len << 56;
    size_t i = 0;

    for (; i + 8 <= len; i += 8) {
        uint64_t m = load64le(in + i);

        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)in[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

/* A datagram's fingerprint, to tell whether a source sends back what it was
 * sent: the whole payload, 32 bytes a step in four lanes (cheap next to the
 * copies in and out of the kernel), keyed with the server's random key:
 * which payloads the loop detector samples cannot be predicted, so an
 * attacker cannot pick loop payloads it never looks at. */
static uint64_t fingerprint(const udp_echo *u, const uint8_t *p, size_t len)
{
    uint64_t h[4] = {u->key[0], u->key[1], ~u->key[0], ~u->key[1]};
    uint64_t t = len;
    size_t i = 0;

    for (; i + 32 <= len; i += 32) {
        for (int j = 0; j < 4; j++) {
            uint64_t w;

            memcpy(&w, p + i + 8 * (size_t)j, 8);
            h[j] = (h[j] ^ w) * 0x9e3779b97f4a7c15ull;
            h[j] ^= h[j] >> 29;
        }
    }
    for (; i < len; i++)
        t = (t ^ p[i]) * 0x100000001b3ull;
    return mix64(h[0] ^ mix64(h[1] ^ mix64(h[2] ^ mix64(h[3] ^ t))));
}

/* ---- the guard ------------------------------------------------------------ */

static int v4_unanswerable(const uint8_t a[4])
{
    /* multicast 224/4, limited broadcast, "this host" 0/8 */
    return (a[0] & 0xf0) == 224 || (a[0] == 255 && a[1] == 255 && a[2] == 255 && a[3] == 255) ||
           a[0] == 0;
}

static int guarded_port(int port)
{
    if (port < GUARDED_BELOW)
        return 1;
    for (size_t i = 0; i < sizeof guarded_ports / sizeof guarded_ports[0]; i++) {
        if (port == guarded_ports[i])
            return 1;
    }
    return 0;
}

static int port_of(const net_addr *a)
{
    return ntohs(a->sa.sa_family == AF_INET ? a->in4.sin_port : a->in6.sin6_port);
}

int udp_guarded(const net_addr *src)
{
    if (src->sa.sa_family == AF_INET) {
        if (v4_unanswerable((const uint8_t *)&src->in4.sin_addr))
            return 1;
    } else if (src->sa.sa_family == AF_INET6) {
        const uint8_t *a = src->in6.sin6_addr.s6_addr;

        if (a[0] == 0xff || IN6_IS_ADDR_UNSPECIFIED(&src->in6.sin6_addr))
            return 1;
        if (IN6_IS_ADDR_V4MAPPED(&src->in6.sin6_addr) && v4_unanswerable(a + 12))
            return 1;
    } else {
        return 1;
    }
    return guarded_port(port_of(src));
}

int udp_to_group(const net_pktinfo *dst)
{
    if (!dst->known)
        return 0;
    if (dst->group)
        return 1;
    if (dst->v4)
        return v4_unanswerable(dst->addr);
    return dst->addr[0] == 0xff; /* IPv6 multicast, ff00::/8 */
}

/* ---- rate limits: integer token buckets ------------------------------------ */

static void refill(bucket *b, uint32_t rate, uint64_t now_ms)
{
    uint64_t cap = (uint64_t)rate * MILLI;
    uint64_t elapsed = now_ms - b->last_ms;

    /* A second refills it whole: no need to multiply (or overflow) more. */
    b->tokens = elapsed >= 1000 ? cap : b->tokens + elapsed * rate;
    if (b->tokens > cap)
        b->tokens = cap;
    b->last_ms = now_ms;
}

static int take(bucket *b, uint32_t rate, uint64_t now_ms)
{
    refill(b, rate, now_ms);
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

/* The loop detector starts again, as for a new source. */
static void loop_reset(source *s)
{
    s->level = 0;
    s->nfp = 0;
    s->tripped = 0;
    s->hits = 0;
    s->run = 0;
    s->dry = 0;
}

static void source_reset(source *s, const uint8_t key[18], uint64_t now_ms)
{
    memcpy(s->key, key, sizeof s->key);
    s->used = 1;
    loop_reset(s);
    s->seen_ms = now_ms;
}

/*
 * The source's state. Its slot is a keyed hash of its key. A slot held by
 * another source is taken over only once that one has been quiet for
 * QUIET_MS (its bucket is full again then: it loses nothing); until then the
 * newcomer shares the overflow entry, whose bucket has the same rate. A
 * source taking over a slot that someone found held in the last QUIET_MS
 * (it may have been using the overflow bucket meanwhile) starts with no more
 * tokens than the overflow bucket holds, so moving from one to the other
 * never adds to its limit; any other newcomer starts with a full bucket, as
 * a source silent for QUIET_MS would have.
 */
static source *source_of(udp_echo *u, const net_addr *src, uint64_t now_ms)
{
    uint8_t key[18];
    source *s;

    source_key(src, key);
    s = &u->sources[siphash24(u->key, key, sizeof key) % SOURCES];
    if (s->used && memcmp(s->key, key, sizeof key) == 0)
        return s;
    if (!s->used || now_ms - s->seen_ms >= QUIET_MS) {
        int contended = s->used && now_ms - s->contended_ms < QUIET_MS;
        uint32_t rate = u->cfg.udp_rate_per_source;

        source_reset(s, key, now_ms);
        if (rate != 0 && contended) {
            refill(&u->overflow.b, rate, now_ms);
            s->b.tokens = u->overflow.b.tokens;
        } else {
            s->b.tokens = (uint64_t)rate * MILLI;
        }
        s->b.last_ms = now_ms;
        return s;
    }
    s->contended_ms = now_ms;
    s = &u->overflow;
    if (!s->used || memcmp(s->key, key, sizeof key) != 0)
        source_reset(s, key, now_ms); /* its bucket is shared: kept */
    return s;
}

/* ---- dropping ------------------------------------------------------------- */

static void drop(udp_echo *u, int reason, const net_addr *src, uint64_t n, uint64_t now_ms)
{
    if (n == 0)
        return;
    count(&u->stats->dropped[reason], n);
    u->unreported[reason] += n;
    if (u->on_drop != NULL && now_ms >= u->next_report_ms[reason]) {
        u->on_drop(u->ctx, reason, src, u->unreported[reason]);
        u->unreported[reason] = 0;
        u->next_report_ms[reason] = now_ms + REPORT_EVERY_MS;
    }
}

/* One more echo to this source (s: NULL without a table): a token from its
 * bucket, then one from the global bucket (none spent there if its own is
 * empty). */
static int charge(udp_echo *u, source *s, const net_addr *src, uint64_t now_ms, int report)
{
    if (s != NULL && u->cfg.udp_rate_per_source != 0 &&
        !take(&s->b, u->cfg.udp_rate_per_source, now_ms)) {
        if (report)
            drop(u, ECHO_DROP_RATE_SOURCE, src, 1, now_ms);
        return 0;
    }
    if (u->cfg.udp_rate != 0 && !take(&u->global, u->cfg.udp_rate, now_ms)) {
        if (report)
            drop(u, ECHO_DROP_RATE_GLOBAL, src, 1, now_ms);
        return 0;
    }
    return 1;
}

/* ---- loops ------------------------------------------------------------------ */

/* Is a fingerprint sampled at this level (its top `level` bits zero)? */
static int sampled(uint64_t fp, unsigned level)
{
    return level == 0 || fp >> (64 - level) == 0;
}

static int kept(const source *s, uint64_t fp)
{
    for (unsigned i = 0; i < s->nfp; i++) {
        if (s->fps[i] == fp)
            return 1;
    }
    return 0;
}

/*
 * A datagram from s with fingerprint fp: is it part of a loop? A sampled
 * fingerprint kept in the table is a return (the datagram was echoed to s
 * before); a sampled one not kept is new, and ends the run; one not sampled
 * tells nothing, and the run goes on. A loop is a run of udp_loop_limit
 * datagrams (and of LOOP_SPAN << level when sampling, so that new payloads
 * cannot all have escaped the sample) with LOOP_HITS sampled returns in it.
 * docs/SECURITY.md has the argument.
 */
static int loop_seen(source *s, uint64_t fp, uint32_t limit, uint64_t now_ms)
{
    uint64_t need = limit;

    if (now_ms - s->seen_ms >= LOOP_GAP_MS)
        loop_reset(s);
    if (!sampled(fp, s->level)) {
        s->run++;
        s->dry++;
    } else if (kept(s, fp)) {
        s->run++;
        s->hits += s->hits < UINT32_MAX;
        s->dry = 0;
    } else {
        if (s->tripped)
            loop_reset(s); /* the loop is over: start again */
        s->run = 0;
        s->hits = 0;
        s->dry++;
    }
    if (s->dry >= (uint64_t)LOOP_DRY << s->level)
        loop_reset(s); /* a level too high to see what comes back */
    if (s->level > 0 && need < (uint64_t)LOOP_SPAN << s->level)
        need = (uint64_t)LOOP_SPAN << s->level;
    if (s->run >= need && s->hits >= (limit < LOOP_HITS ? limit : LOOP_HITS))
        s->tripped = 1;
    return s->tripped;
}

/* An echo with fingerprint fp goes to s: kept if sampled; a full table
 * halves the sample (level + 1) until there is room or fp is not sampled. */
static void loop_echoed(source *s, uint64_t fp)
{
    if (!sampled(fp, s->level) || kept(s, fp))
        return;
    while (s->nfp == LOOP_K) {
        unsigned n = 0;

        if (s->level == LOOP_LEVEL_MAX)
            return;
        s->level++;
        for (unsigned i = 0; i < s->nfp; i++) {
            if (sampled(s->fps[i], s->level))
                s->fps[n++] = s->fps[i];
        }
        s->nfp = (uint8_t)n;
        if (!sampled(fp, s->level))
            return;
    }
    s->fps[s->nfp++] = fp;
}

/* ---- admitting -------------------------------------------------------------- */

/*
 * Should this datagram be echoed? The guard first (its source, then its
 * destination), then the loop checks (a datagram from the server's own port;
 * a source sending back what it was sent: loop_seen()), then the source's
 * limit, then the global one. *sp: the source's state, for the faults.
 */
static int admit(udp_echo *u, const net_addr *src, const net_pktinfo *dst, const uint8_t *data,
                 size_t len, uint64_t now_ms, source **sp)
{
    uint32_t limit = u->cfg.udp_loop_limit;
    source *s = NULL;
    uint64_t fp = 0;

    *sp = NULL;
    if (u->cfg.udp_guard && (udp_guarded(src) || udp_to_group(dst))) {
        drop(u, ECHO_DROP_GUARD, src, 1, now_ms);
        return 0;
    }
    if (limit != 0 && port_of(src) == u->port) {
        drop(u, ECHO_DROP_LOOP, src, 1, now_ms);
        return 0;
    }
    if (u->sources != NULL) {
        int loop;

        s = source_of(u, src, now_ms);
        if (limit != 0)
            fp = fingerprint(u, data, len);
        loop = limit != 0 && loop_seen(s, fp, limit, now_ms);
        s->seen_ms = now_ms;
        if (loop) {
            drop(u, ECHO_DROP_LOOP, src, 1, now_ms);
            return 0;
        }
    }
    if (!charge(u, s, src, now_ms, 1))
        return 0;
    if (s != NULL && limit != 0)
        loop_echoed(s, fp);
    *sp = s;
    return 1;
}

/* ---- echoing ---------------------------------------------------------------- */

static void take_back(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) - n,
                          memory_order_relaxed);
}

/* Send the m queued echoes. Counted first, so whoever has an echo sees it
 * counted; what is not sent is taken back. A full send buffer drops the rest
 * (a datagram service must not block or queue without bound); a datagram
 * that cannot be sent (too big for the route, no route) is dropped alone.
 * Drops count datagrams: a duplicate's second copy not sent is none. */
static void send_batch(udp_echo *u, int fd, int m, uint64_t now_ms)
{
    uint64_t bytes = 0;
    int i = 0;

    for (int k = 0; k < m; k++)
        bytes += u->out_iov[k].iov_len;
    count(&u->stats->datagrams_out, (uint64_t)m);
    count(&u->stats->bytes_out, bytes);
    while (i < m) {
        int n = compat_sendmmsg(fd, u->out + i, (unsigned)(m - i),
                                MSG_DONTWAIT | COMPAT_MSG_NOSIGNAL);

        if (n > 0) {
            i += n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            uint64_t lost = 0, gone = 0;

            for (int k = i; k < m; k++) {
                gone += u->out_iov[k].iov_len;
                lost += !u->out_dup[k];
            }
            take_back(&u->stats->datagrams_out, (uint64_t)(m - i));
            take_back(&u->stats->bytes_out, gone);
            drop(u, ECHO_DROP_FULL, u->out[i].msg_hdr.msg_name, lost, now_ms);
            return;
        }
        take_back(&u->stats->datagrams_out, 1);
        take_back(&u->stats->bytes_out, u->out_iov[i].iov_len);
        drop(u, ECHO_DROP_ERROR, u->out[i].msg_hdr.msg_name, !u->out_dup[i], now_ms);
        i++;
    }
}

/* Queue one echo in the out batch, leaving from the address it was sent to
 * when the socket has more than one. */
static void out_add(udp_echo *u, int m, void *data, size_t len, const net_addr *to,
                    const net_pktinfo *via, int dup)
{
    struct msghdr *h = &u->out[m].msg_hdr;
    size_t ctl = 0;

    u->out_iov[m].iov_base = data;
    u->out_iov[m].iov_len = len;
    h->msg_name = (void *)to;
    h->msg_namelen = net_addr_len(to);
    if (u->wildcard)
        ctl = net_pktinfo_write(via, u->family, &u->out_ctl[m], sizeof u->out_ctl[m]);
    h->msg_control = ctl != 0 ? &u->out_ctl[m] : NULL;
    h->msg_controllen = ctl;
    u->out_dup[m] = dup;
}

/* Faults on an admitted datagram: drop it, or hold its echo (one or two,
 * duplicated) for latency. Returns how many echoes go out now (0, 1, 2).
 * Draws come in this order: drop, duplicate, delay. A duplicate is charged
 * against both rate limits like any echo; without a token it is not sent. */
static int fault(udp_echo *u, source *s, const uint8_t *data, size_t len, const net_addr *src,
                 const net_pktinfo *dst, uint64_t now_ms)
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
    if (copies == 2 && !charge(u, s, src, now_ms, 0))
        copies = 1;
    if (f->latency_ms == 0 && f->jitter_ms == 0)
        return copies;
    uint64_t due = now_ms + fx_delay(&u->rng, f);
    for (int i = 0; i < copies; i++) {
        /* Held echo is bounded like a TCP connection's queue. */
        if (u->delayed.cost + len + FX_CHUNK_COST > u->cfg.max_pending ||
            fx_queue_push(&u->delayed, due, data, len, src, 0) != 0) {
            drop(u, ECHO_DROP_FULL, src, i == 0, now_ms);
            break;
        }
        u->delayed.tail->via = *dst;
        u->delayed.tail->dup = i;
    }
    return 0;
}

void udp_echo_readable(udp_echo *u, int fd, uint64_t now_ms)
{
    for (int batch = 0; batch < BATCHES; batch++) {
        int n, m = 0;

        for (int i = 0; i < BATCH; i++) {
            u->in[i].msg_hdr.msg_namelen = sizeof u->from[i];
            u->in[i].msg_hdr.msg_control = u->wildcard ? &u->in_ctl[i] : NULL;
            u->in[i].msg_hdr.msg_controllen = u->wildcard ? sizeof u->in_ctl[i] : 0;
            u->in[i].msg_hdr.msg_flags = 0;
        }
        n = compat_recvmmsg(fd, u->in, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return; /* EAGAIN: all done; errors of earlier sends: nothing to do */
        for (int i = 0; i < n; i++) {
            const net_addr *src = &u->from[i];
            const uint8_t *data = u->in_iov[i].iov_base;
            size_t len = u->in[i].msg_len;
            source *s;
            int copies;

            count(&u->stats->datagrams_in, 1);
            count(&u->stats->bytes_in, len);
            if (u->wildcard)
                net_pktinfo_read(&u->in[i].msg_hdr, &u->dst[i]);
            else
                u->dst[i] = u->fixed;
            if (!admit(u, src, &u->dst[i], data, len, now_ms, &s))
                continue;
            copies = fault(u, s, data, len, src, &u->dst[i], now_ms);
            for (int c = 0; c < copies; c++)
                out_add(u, m++, u->in_iov[i].iov_base, len, src, &u->dst[i], c);
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
            out_add(u, m, c->data, c->len, &c->to, &c->via, c->dup);
            m++;
        }
        send_batch(u, fd, m, now_ms);
        for (int i = 0; i < m; i++)
            free(u->sending[i]);
    }
    return udp_echo_due(u);
}

void udp_echo_discard(udp_echo *u, uint64_t now_ms)
{
    while (u->delayed.head != NULL) {
        fx_chunk *c = fx_queue_pop(&u->delayed);

        drop(u, ECHO_DROP_SHUTDOWN, &c->to, !c->dup, now_ms);
        free(c);
    }
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
    int rc;

    if (u == NULL)
        return -ENOMEM;
    u->cfg = *cfg;
    u->cfg.quit_word = NULL; /* not used over UDP; not ours to keep */
    u->stats = stats;
    u->on_drop = on_drop;
    u->ctx = ctx;
    u->port = -1;
    rc = compat_random(u->key, sizeof u->key);
    if (rc != 0) {
        free(u);
        return rc;
    }
    u->bufs = malloc((size_t)BATCH * DGRAM_MAX);
    if (cfg->udp_rate_per_source != 0 || cfg->udp_loop_limit != 0)
        u->sources = calloc(SOURCES, sizeof *u->sources);
    if (u->bufs == NULL ||
        ((cfg->udp_rate_per_source != 0 || cfg->udp_loop_limit != 0) && u->sources == NULL)) {
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

int udp_echo_bind(udp_echo *u, int fd)
{
    net_addr a;
    socklen_t len = sizeof a;

    if (getsockname(fd, &a.sa, &len) != 0)
        return -errno;
    u->family = a.sa.sa_family;
    u->port = port_of(&a);
    u->wildcard = a.sa.sa_family == AF_INET ? a.in4.sin_addr.s_addr == htonl(INADDR_ANY)
                                            : IN6_IS_ADDR_UNSPECIFIED(&a.in6.sin6_addr);
    if (!u->wildcard) {
        /* One address: every datagram was sent to it. A broadcast address
         * of an interface can be bound too: the system refuses to connect
         * to one without SO_BROADCAST. */
        net_pktinfo *f = &u->fixed;

        f->known = 1;
        if (a.sa.sa_family == AF_INET) {
            f->v4 = 1;
            memcpy(f->addr, &a.in4.sin_addr, 4);
        } else if (IN6_IS_ADDR_V4MAPPED(&a.in6.sin6_addr)) {
            f->v4 = 1;
            memcpy(f->addr, a.in6.sin6_addr.s6_addr + 12, 4);
        } else {
            memcpy(f->addr, a.in6.sin6_addr.s6_addr, 16);
        }
        f->group = f->v4 && net_is_broadcast(f->addr);
        return 0;
    }
    /* Without it (a system that cannot say) answers leave from the address
     * the system picks, and a datagram to a subnet's broadcast address is
     * not recognised. */
    (void)net_want_pktinfo(fd, u->family);
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
