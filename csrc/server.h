/*
 * server.h - inside the echo server: what server.c (the TCP and UDP server
 * on the event loop) and tcp_faults.c (the faults on a TCP connection's echo
 * path) share. Not part of the public API (pyecho.h).
 */
#ifndef PYECHO_SERVER_H
#define PYECHO_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "faults.h"
#include "loop.h"
#include "net.h"
#include "outbuf.h"
#include "pyecho.h"
#include "stats.h"
#include "tls.h"
#include "udp.h"

#define CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* Events carry any address net_format() writes, IPv6 scope included. */
_Static_assert(sizeof(((echo_event *)0)->host) >= NET_HOSTLEN, "echo_event.host too small");

typedef struct conn_fx conn_fx;

typedef struct conn {
    ev_io io;
    int closing;       /* 0, or 1 + the close reason once the peer is done */
    int lingering;     /* after quit (or limit): output sent and shut, input dropped */
    int cont;          /* line mode: inside a line longer than max_line */
    uint64_t id;
    uint64_t last_active_ms;  /* or, lingering, when the lingering began */
    struct conn *prev, *next; /* in srv->active or srv->lingering */
    uint8_t *held;     /* line mode: a partial line, fewer than max_line bytes */
    size_t held_len;
    outbuf out;        /* echo the client has not taken yet */
    net_addr peer;
    uint64_t opened_ms;
    conn_fx *fx;       /* fault state; NULL until faults apply to it */
    tls_conn *tls;     /* TLS state (tls.c); NULL on a plain server */
    struct echo_server *srv;
} conn;

/* A connection's faults: echo held for latency, the send gate (rate,
 * slice), its reset and wait timers, and its own random generator. */
struct conn_fx {
    conn *c;
    uint64_t rng;
    fx_queue delayed;       /* echo held until its time (latency, jitter) */
    ev_timer release;       /* when the head of `delayed` is due */
    ev_timer gate;          /* pending: sending waits (rate, slice_delay) */
    ev_timer reset;         /* reset_after */
    ev_timer wait;          /* accept_delay, then close_delay */
    uint64_t next_send_ms;  /* slice_delay: not before */
    uint64_t tokens;        /* rate: thousandths of a byte */
    uint64_t tokens_ms;
    uint64_t echoed;        /* bytes let into the echo: limit, stall_after */
    outbuf stalled;         /* echo past stall_after, kept in order until the
                             * stall lifts; the connection is not read meanwhile */
    int waiting;            /* 0, ACCEPT_WAIT or CLOSE_WAIT while `wait` runs */
    int close_waited;       /* close_delay already spent */
};

enum { ACCEPT_WAIT = 1, CLOSE_WAIT = 2, HANDSHAKE_WAIT = 3 };

/* Oldest first: idle and linger deadlines are then O(1) to find. */
typedef struct conn_list {
    conn *oldest, *newest;
    ev_timer timer; /* at the oldest one's deadline (or earlier: re-armed) */
} conn_list;

struct echo_server {
    echo_config cfg;
    uint8_t quit_word[256];
    ev_loop *loop;
    ev_io listener;         /* TCP: the listening socket; UDP: the socket */
    udp_echo *udp;          /* UDP only */
    ev_timer accept_pause;  /* accepting resumes when it fires */
    uint64_t next_id;
    conn_list active;       /* least recently active first */
    conn_list lingering;    /* in the order they began lingering */
    uint8_t *scratch;       /* held line + one read */
    size_t scratch_cap;
    echo_event_fn event_fn;
    void *event_ctx;
    atomic_int stop;
    echo_faults *faults;    /* in effect (loop thread); NULL: none */
    _Atomic(echo_faults *) pending_faults; /* from echo_server_set_faults() */
    ev_timer udp_release;   /* UDP: the next delayed datagram is due */
    int failed;             /* 0, or why one of the timers above could not
                             * start: echo_server_run() returns it */
    counters stats;
    tls_ctx *tls;           /* TLS for new connections (tls.c); NULL: plain */
    outbuf batch;           /* TLS: the records one tls_progress() makes, sent
                             * at its end with one send() (its memory kept) */
    char tls_error[256];    /* why echo_server_set_tls() failed */
};

/* ---- server.c, for tcp_faults.c ------------------------------------------ */

/* Close (reason: enum echo_close_reason), with an event, and free. */
void conn_close(echo_server *srv, conn *c, int reason);
/* The same with a reset (RST) instead of a FIN. */
void conn_reset(echo_server *srv, conn *c, int reason);
/* All echo is out and the connection ends as `reason` says (lingering after
 * quit and limit; close_delay first). */
void conn_done(echo_server *srv, conn *c, int reason);
/* Echo not yet handed to the kernel: queued, and held by faults. */
size_t queued(const conn *c);
/* Watch what the connection's state needs; 0 or a negative errno. */
int update_interest(echo_server *srv, conn *c);
/* The queues changed: end the connection if it was ending and all its echo
 * is out (and no fault makes it wait), else watch what it needs. 1 if it
 * was closed or ended. */
int conn_settle(echo_server *srv, conn *c);
/* The peer is done (EOF or quit) or the limit is reached: end now, or once
 * the queue drains. */
void conn_finish(echo_server *srv, conn *c, int reason);
/* Is this errno a failed connection (not "try again")? */
int is_reset(int err);
/* Echo data into the output queue (as TLS records on a TLS connection);
 * 0, or -1 out of memory. */
int out_add(echo_server *srv, conn *c, const uint8_t *data, size_t len);
/* TLS: move the handshake on, then decrypt and echo what came; 1 if the
 * connection was closed or ended. */
int tls_progress(echo_server *srv, conn *c);

/* ---- tcp_faults.c, for server.c ------------------------------------------ */

/* Fault state for c, its generator seeded from the faults in effect; NULL
 * when out of memory. */
conn_fx *fx_attach(echo_server *srv, conn *c);
void fx_free(echo_server *srv, conn_fx *fx);
/* Send what the faults let go now (rate, slice); 0, or -1 on failure. */
int fx_flush(echo_server *srv, conn *c);
/* Echo data through the faults: 0, 1 when the limit is reached, -1 on
 * failure. */
int fx_echo(echo_server *srv, conn *c, const uint8_t *data, size_t len);
/* Bring c in line with the server's faults, new or changed; 1 if it was
 * closed. */
int fx_update(echo_server *srv, conn *c);
/* stall_after holds c's echo back: it must not be read (backpressure). */
int fx_stalled(const echo_server *srv, const conn *c);
/* accept_delay or close_delay is over. */
void on_fx_wait(ev_loop *loop, ev_timer *t);

#endif
