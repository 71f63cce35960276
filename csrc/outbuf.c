/*
 * outbuf.c - see outbuf.h.
 */
#include <stdlib.h>
#include <string.h>

#include "outbuf.h"

#define OUTBUF_MIN 4096

int outbuf_append(outbuf *q, const uint8_t *bytes, size_t len)
{
    if (len == 0)
        return 0;
    if (q->head + q->len + len > q->cap && q->head > 0) {
        memmove(q->data, q->data + q->head, q->len);
        q->head = 0;
    }
    if (q->len + len > q->cap) {
        size_t cap = q->cap ? q->cap : OUTBUF_MIN;
        uint8_t *grown;

        while (cap < q->len + len)
            cap *= 2; /* the caller's bound keeps this far from overflow */
        grown = realloc(q->data, cap);
        if (grown == NULL)
            return -1;
        q->data = grown;
        q->cap = cap;
    }
    memcpy(q->data + q->head + q->len, bytes, len);
    q->len += len;
    return 0;
}

void outbuf_consume(outbuf *q, size_t n)
{
    if (n >= q->len) {
        /* Drained: idle connections should cost little memory. */
        outbuf_free(q);
        return;
    }
    q->head += n;
    q->len -= n;
}

void outbuf_free(outbuf *q)
{
    free(q->data);
    q->data = NULL;
    q->head = q->len = q->cap = 0;
}
