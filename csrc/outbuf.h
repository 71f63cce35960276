/*
 * outbuf.h - a connection's queue of bytes waiting to be sent: one growable
 * buffer, consumed from the front. Pure memory handling, no I/O, so it can be
 * unit-tested alone (tests/c/). The caller bounds its size (max_pending).
 */
#ifndef PYECHO_OUTBUF_H
#define PYECHO_OUTBUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct outbuf {
    uint8_t *data;
    size_t head; /* first unsent byte */
    size_t len;  /* unsent bytes from head */
    size_t cap;
} outbuf;

/* Append len bytes; 0, or -1 when out of memory (the queue is unchanged). */
int outbuf_append(outbuf *q, const uint8_t *bytes, size_t len);
/* Drop n sent bytes from the front; an emptied queue gives its memory back. */
void outbuf_consume(outbuf *q, size_t n);
/* The unsent bytes. */
static inline const uint8_t *outbuf_begin(const outbuf *q) { return q->data + q->head; }
void outbuf_free(outbuf *q);

#endif
