/*
 * tls.h - TLS for the echo server's connections (tls.c, over OpenSSL): a
 * context built from echo_tls_config, and per connection an SSL object over
 * two memory BIOs. server.c keeps moving raw bytes on the socket (so faults
 * act on the records on the wire); this layer sits between those bytes and
 * the echo. Without OpenSSL at build time every function here fails (and
 * echo_tls_available() is 0). pyecho/_pytls.py is the Python twin.
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
    void *ssl;     /* SSL *, its BIOs memory ones */
    int ready;     /* the handshake is complete */
    int started;   /* its first bytes came (the handshake faults were decided) */
    int stalled;   /* handshake_stall: input is dropped, nothing answered */
    int notified;  /* our close_notify is queued */
} tls_conn;

/* A server context; 0, or a negative errno (the reason in err). */
int tls_ctx_new(const echo_tls_config *cfg, tls_ctx **out, char *err, size_t errlen);
void tls_ctx_free(tls_ctx *ctx);

/* A connection's TLS state; NULL when out of memory. */
tls_conn *tls_conn_new(tls_ctx *ctx);
void tls_conn_free(tls_conn *t);
/* Bytes read from the socket; 0, or -1 out of memory. */
int tls_feed(tls_conn *t, const uint8_t *data, size_t len);
/* Move the handshake on: 1 once complete, 0 while it needs input, -1 if it
 * failed (its alert, if any, is then waiting for tls_take()). */
int tls_handshake(tls_conn *t);
/* Up to cap bytes of plaintext (one record's at most): how many, 0 when
 * more input is needed, -1 at the peer's close_notify, -2 on a bad record. */
ssize_t tls_read(tls_conn *t, uint8_t *buf, size_t cap);
/* Encrypt len bytes and move every record waiting (these and any before
 * them) to out; 0, or -1 on failure. */
int tls_seal(tls_conn *t, const uint8_t *data, size_t len, outbuf *out);
/* Move the records waiting (handshake, tickets, alerts) to out; 0 or -1. */
int tls_take(tls_conn *t, outbuf *out);
/* Queue our close_notify in out; 0 or -1. */
int tls_close_notify(tls_conn *t, outbuf *out);

#endif
