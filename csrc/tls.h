/*
 * tls.h - TLS for the echo server's connections (tls.c, over OpenSSL): a
 * context built from echo_tls_config, and per connection an SSL object over
 * a BIO of our own: OpenSSL reads the non-blocking socket itself (recv(), no
 * copy in between; on the server reading ahead, one recv() per readiness
 * event: per_turn), and its records go out with send(MSG_NOSIGNAL) at once
 * when nothing is queued and no fault applies (direct), else into `out`:
 * the connection's output queue, where the faults (slice, rate) act on the
 * records on the wire, or the server's batch (server.c), sent at the end of
 * the turn. Without OpenSSL at build time every function here fails (and
 * echo_tls_available() is 0). pyecho/_pytls.py is the Python twin (memory
 * BIOs: the same behaviour, one more copy).
 */
#ifndef PYECHO_TLS_H
#define PYECHO_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "outbuf.h"
#include "pyecho.h"

typedef struct tls_ctx tls_ctx;

typedef struct tls_conn {
    void *ssl;     /* SSL *, over tls.c's socket BIO */
    int fd;        /* the connection's socket */
    outbuf *out;   /* records that cannot go at once wait here (the server
                    * may point it at its batch for a turn) */
    int direct;    /* 1: a record may be sent at once when out is empty */
    int eof;       /* the peer's end of input (FIN) was read */
    int failed;    /* a recv() or send() failed, or out of memory: reset */
    int read_failed; /* ... a recv() */
    int keep_reading; /* clients: after a failed send(), input is still read
                       * (the server's last records, before its close) */
    int ready;     /* the handshake is complete */
    int started;   /* its first bytes came (the handshake faults were decided) */
    int stalled;   /* handshake_stall: input is dropped, nothing answered */
    int notified;  /* our close_notify is queued */
    int error;     /* the errno of the recv() or send() that failed */
    unsigned long why; /* OpenSSL's error at a failed handshake or read */
    int per_turn;  /* 1 (server connections): OpenSSL reads ahead, with one
                    * recv() per readiness event (`read_done`) */
    int read_done; /* this turn's recv() was made (or the server reads no
                    * more in it): OpenSSL's reads wait for the next turn */
    size_t out_max; /* clients: after the handshake, past this many bytes in
                     * out OpenSSL's writes wait (0: no bound; the server
                     * bounds its queues itself) */
} tls_conn;

/* A server context; 0, or a negative errno (the reason in err). */
int tls_ctx_new(const echo_tls_config *cfg, tls_ctx **out, char *err, size_t errlen);
void tls_ctx_free(tls_ctx *ctx);

/* A connection's TLS state over socket fd, records queued in out; NULL
 * when out of memory. */
tls_conn *tls_conn_new(tls_ctx *ctx, int fd, outbuf *out);
void tls_conn_free(tls_conn *t);
/* Move the handshake on (reading the socket): 1 once complete, 0 while it
 * needs input, -1 if it failed (its alert, if any, sent or queued). */
int tls_handshake(tls_conn *t);
/* Up to cap bytes of plaintext (one record's at most), read from the
 * socket as needed: how many, 0 when more input is needed (or, out full
 * past out_max, OpenSSL's answer must be sent first), -1 at the end of
 * input (close_notify, or the FIN), -2 on a bad record or a failed recv(). */
ssize_t tls_read(tls_conn *t, uint8_t *buf, size_t cap);
/* Plaintext already decrypted, waiting for tls_read(); with `per_turn`, 1
 * when OpenSSL holds any input it read ahead (whole records or not). */
size_t tls_pending(const tls_conn *t);
/* Encrypt len bytes: the records are sent or queued; 0, or -1 on failure. */
int tls_seal(tls_conn *t, const uint8_t *data, size_t len);
/* 0, or -1 if sending failed (the connection must be reset). */
int tls_take(tls_conn *t);
/* Send (or queue) our close_notify; 0 or -1. */
int tls_close_notify(tls_conn *t);

/* ---- the client's side (csrc/client.c) ---- */

/* A client context, as Python's ssl would build it from the same settings;
 * 0, or a negative errno (the reason in err). */
int tls_client_ctx_new(const echo_tls_client_config *cfg, tls_ctx **out, char *err,
                       size_t errlen);
/* A client connection over fd: SNI and the name checked come from cfg;
 * NULL when out of memory. A name OpenSSL refuses (too long for SNI) gives
 * a connection already `failed`, `why` saying why. */
tls_conn *tls_client_conn_new(tls_ctx *ctx, const echo_tls_client_config *cfg, int fd,
                              outbuf *out);
/* Encrypt len bytes (client): 1 once the records are sent or queued, 0
 * when OpenSSL must read first (a renegotiation the server asked for:
 * nothing was sealed; call again once the socket is readable), -1 on
 * failure (its reason kept for tls_conn_why()). */
int tls_write(tls_conn *t, const uint8_t *data, size_t len);
/* Why the handshake, a read or a write failed, in OpenSSL's words. */
void tls_conn_why(const tls_conn *t, echo_tls_error *out);
/* The protocol version and ALPN protocol negotiated; 0 or -1. */
int tls_conn_info(const tls_conn *t, char *version, size_t vlen, char *alpn, size_t alen);

#endif
