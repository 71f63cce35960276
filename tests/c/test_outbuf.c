/*
 * test_outbuf.c - unit tests of csrc/outbuf.c, the per-connection output
 * queue: contents in order, memory given back when drained, growth bounded,
 * the queue unchanged when memory runs out. CMake compiles outbuf.c for this
 * test with -Drealloc=outbuf_test_realloc so allocation failures can be
 * injected.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "outbuf.h"

#undef realloc
void *realloc(void *p, size_t n); /* <stdlib.h> declared it under the macro */
static int fail_next_realloc;

void *outbuf_test_realloc(void *p, size_t n);
void *outbuf_test_realloc(void *p, size_t n)
{
    if (fail_next_realloc) {
        fail_next_realloc = 0;
        return NULL;
    }
    return realloc(p, n);
}

static void test_empty(void)
{
    outbuf q = {0};

    CHECK_EQ(outbuf_append(&q, (const uint8_t *)"x", 0), 0);
    CHECK(q.data == NULL);
    CHECK_EQ(q.cap, 0);
    outbuf_consume(&q, 0);
    CHECK(q.data == NULL);
    outbuf_free(&q);
    outbuf_free(&q); /* twice is fine */
    CHECK(q.data == NULL);
}

static void test_append_consume(void)
{
    outbuf q = {0};

    CHECK_EQ(outbuf_append(&q, (const uint8_t *)"hello ", 6), 0);
    CHECK_EQ(outbuf_append(&q, (const uint8_t *)"world", 5), 0);
    CHECK_EQ(q.len, 11);
    CHECK_EQ(q.cap, 4096);
    CHECK(memcmp(outbuf_begin(&q), "hello world", 11) == 0);
    outbuf_consume(&q, 6);
    CHECK_EQ(q.len, 5);
    CHECK(memcmp(outbuf_begin(&q), "world", 5) == 0);
    outbuf_consume(&q, 5); /* drained: the memory goes back */
    CHECK(q.data == NULL);
    CHECK_EQ(q.len, 0);
    CHECK_EQ(q.cap, 0);
    CHECK_EQ(q.head, 0);
    CHECK_EQ(outbuf_append(&q, (const uint8_t *)"again", 5), 0);
    CHECK(memcmp(outbuf_begin(&q), "again", 5) == 0);
    outbuf_consume(&q, 99); /* more than queued: drained too */
    CHECK(q.data == NULL);
}

static void test_compacts_before_growing(void)
{
    outbuf q = {0};
    uint8_t block[3000];

    memset(block, 'a', sizeof block);
    CHECK_EQ(outbuf_append(&q, block, sizeof block), 0);
    outbuf_consume(&q, 2500); /* 500 left at head 2500 */
    memset(block, 'b', sizeof block);
    CHECK_EQ(outbuf_append(&q, block, 3000), 0); /* 3500 fit in 4096 */
    CHECK_EQ(q.cap, 4096);
    CHECK_EQ(q.head, 0);
    CHECK_EQ(q.len, 3500);
    CHECK(outbuf_begin(&q)[499] == 'a' && outbuf_begin(&q)[500] == 'b');
    outbuf_free(&q);
}

static void test_out_of_memory_leaves_queue_unchanged(void)
{
    outbuf q = {0};
    uint8_t big[10000];

    memset(big, 'z', sizeof big);
    fail_next_realloc = 1;
    CHECK_EQ(outbuf_append(&q, (const uint8_t *)"abc", 3), -1);
    CHECK(q.data == NULL);
    CHECK_EQ(q.len, 0);
    CHECK_EQ(outbuf_append(&q, (const uint8_t *)"abc", 3), 0);
    fail_next_realloc = 1;
    CHECK_EQ(outbuf_append(&q, big, sizeof big), -1);
    CHECK_EQ(q.len, 3);
    CHECK_EQ(q.cap, 4096);
    CHECK(memcmp(outbuf_begin(&q), "abc", 3) == 0);
    CHECK_EQ(outbuf_append(&q, big, sizeof big), 0);
    CHECK_EQ(q.len, 3 + sizeof big);
    CHECK_EQ(q.cap, 16384);
    outbuf_free(&q);
}

/* Random appends and consumes against a model: the bytes come out in the
 * order they went in, and capacity stays within twice the peak length. */
static void test_random_against_model(void)
{
    enum { STREAM = 1 << 22 };
    uint8_t *chunk = malloc(70000);
    outbuf q = {0};
    unsigned long long in = 0, outpos = 0; /* stream positions */
    size_t peak = 0;
    int ok = 1;

    for (int step = 0; step < 20000 && ok; step++) {
        if (check_rand() % 2) {
            size_t n = check_rand() % (check_rand() % 4 ? 2000 : 70000);

            for (size_t i = 0; i < n; i++)
                chunk[i] = (uint8_t)((in + i) * 131 >> 3);
            ok &= outbuf_append(&q, chunk, n) == 0;
            in += n;
        } else if (q.len > 0) {
            size_t n = check_rand() % (q.len + 1);

            for (size_t i = 0; i < n && ok; i++)
                ok &= outbuf_begin(&q)[i] == (uint8_t)((outpos + i) * 131 >> 3);
            outbuf_consume(&q, n);
            outpos += n;
        }
        ok &= q.len == in - outpos;
        ok &= q.head + q.len <= q.cap;
        if (q.len == 0)
            peak = 0;
        if (q.len > peak)
            peak = q.len;
        ok &= q.cap <= (peak * 2 > 4096 ? peak * 2 : 4096);
        ok &= (q.len == 0) == (q.data == NULL) || q.data != NULL;
        if (in > STREAM) { /* drain now and then so the queue stays small */
            outbuf_consume(&q, q.len);
            outpos = in;
            ok &= q.data == NULL && q.cap == 0;
            peak = 0;
        }
    }
    CHECK(ok);
    outbuf_free(&q);
    free(chunk);
}

int main(void)
{
    RUN(test_empty);
    RUN(test_append_consume);
    RUN(test_compacts_before_growing);
    RUN(test_out_of_memory_leaves_queue_unchanged);
    RUN(test_random_against_model);
    return check_summary("test_outbuf");
}
