/*
 * loadgen.h - the load generator's insides (the API is in pyecho_loadgen.h),
 * shared by loadgen.c (configuration, histogram, the connect and run loops,
 * TCP streams) and loadgen_udp.c (UDP datagrams). It waits through the
 * core's poller.h, so it runs wherever the server does; it is built into its
 * own library, libpyecho_loadgen, never into the product library.
 */
#ifndef PYECHO_LOADGEN_INTERNAL_H
#define PYECHO_LOADGEN_INTERNAL_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "compat.h"
#include "net.h"
#include "poller.h"
#include "pyecho_loadgen.h"

/* What the library exports: the API of pyecho_loadgen.h, nothing else (it
 * is built with hidden visibility; net.c and the poller stay inside). */
#if defined(__GNUC__)
#define LG_API __attribute__((visibility("default")))
#else
#define LG_API
#endif

#define LG_MAX_EVENTS 256
#define LG_BATCH 32 /* datagrams per recvmmsg()/sendmmsg() */

/* Log-linear histogram: values below 2^LG_SUB_BITS exact, then 2^LG_SUB_BITS
 * buckets per power of two (relative error under 1/2^LG_SUB_BITS). */
#define LG_SUB_BITS 5
#define LG_SUB (1u << LG_SUB_BITS)
#define LG_BUCKETS ((64 - LG_SUB_BITS + 1) * LG_SUB)

enum { LG_IDLE = 0, LG_CONNECTING, LG_OPEN };

typedef struct lg_conn {
    int fd;
    int state;
    uint32_t idx;
    uint32_t events; /* poller interest now: EV_READ | EV_WRITE */
    uint64_t tx;     /* bytes sent */
    uint64_t rx;     /* bytes echoed and verified */
    uint64_t limit;  /* TCP: bytes that may be sent so far */
    uint32_t nfree;  /* UDP: slots with no datagram in flight */
} lg_conn;

/*
 * UDP: each socket has `depth` slots, each holding at most one datagram in
 * flight. Slot j sends the sequence numbers j, j + depth, j + 2 depth...,
 * so a sequence number names its slot and every datagram is sent once.
 */
typedef struct lg_slot {
    uint64_t seq;      /* in flight if busy, else the next one to send */
    uint64_t lost_seq; /* the last one counted lost here; UINT64_MAX: none */
    int busy;
} lg_slot;

struct echo_loadgen {
    echo_loadgen_config cfg;
    size_t msg;
    uint32_t variants;
    size_t copy_len;    /* variants * msg: one copy of the pattern */
    uint8_t *pattern;   /* two copies */
    lg_conn *conns;
    uint64_t *sent_ns;  /* connections x depth: when each message in flight started */
    uint8_t *rbuf;      /* TCP: one read */
    poller *poller;
    uint32_t open;
    int running;        /* closed loop on: completions send more */
    int recording;      /* latencies go into the histogram */
    uint64_t in_flight; /* bytes sent and not yet echoed (or lost), all connections */
    uint64_t round_trips, bytes, last_echo_ns;
    uint64_t lat_count, lat_sum, lat_min, lat_max;
    uint64_t hist[LG_BUCKETS];
    poller_event events[LG_MAX_EVENTS];
    /* UDP only */
    lg_slot *slots;      /* connections x depth */
    uint16_t *free_slot; /* connections x depth: a stack of free slots each */
    uint8_t *dgrams;     /* LG_BATCH x msg: one recvmmsg() */
    uint64_t lost, late;
    uint64_t loss_ns, next_scan_ns;
    struct mmsghdr in[LG_BATCH], out[LG_BATCH];
    struct iovec in_iov[LG_BATCH], out_iov[LG_BATCH][2];
    uint64_t out_tag[LG_BATCH];
};

/* Shared by both transports (loadgen.c). */
uint64_t lg_now_ns(void);
/* A non-blocking, close-on-exec socket that raises no SIGPIPE; fd or -errno. */
int lg_socket(int family, int type);
void lg_record(echo_loadgen *lg, uint64_t ns);
/* Record the first error in res (if res has none yet); returns err. */
int lg_fail(echo_loadgen_result *res, int kind, int err, uint32_t conn, uint64_t offset);
int lg_set_interest(echo_loadgen *lg, lg_conn *c, uint32_t want);

/* UDP (loadgen_udp.c). */
int lgu_check(const echo_loadgen_config *cfg);
int lgu_alloc(echo_loadgen *lg);
/* Open connection c's socket, connect it and send its first datagram. */
int lgu_open(echo_loadgen *lg, lg_conn *c, const net_addr *addr, socklen_t len,
             echo_loadgen_result *res);
/* Fill c's free slots, as many as max. */
int lgu_send(echo_loadgen *lg, lg_conn *c, uint32_t max, uint64_t now,
             echo_loadgen_result *res);
int lgu_event(echo_loadgen *lg, lg_conn *c, uint32_t events, echo_loadgen_result *res);
/* Count the datagrams older than the loss timeout as lost (at most every
 * quarter of it); returns 0 or an error from refilling. */
int lgu_expire(echo_loadgen *lg, uint64_t now, echo_loadgen_result *res);

#endif
