/*
 * check.h - the smallest test runner: CHECK() records a failure with its
 * line and carries on; RUN() runs one test function; the exit status is the
 * number of failed checks (capped), so ctest sees any failure.
 */
#ifndef PYECHO_CHECK_H
#define PYECHO_CHECK_H

#include <stdio.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                          \
    do {                                                                     \
        check_count++;                                                       \
        if (!(cond)) {                                                       \
            check_failures++;                                                \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, \
                    #cond);                                                  \
        }                                                                    \
    } while (0)

#define CHECK_EQ(a, b)                                                         \
    do {                                                                       \
        unsigned long long check_a_ = (unsigned long long)(a);                 \
        unsigned long long check_b_ = (unsigned long long)(b);                 \
        check_count++;                                                         \
        if (check_a_ != check_b_) {                                            \
            check_failures++;                                                  \
            fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s) failed: %llu != %llu\n",  \
                    __FILE__, __LINE__, #a, #b, check_a_, check_b_);           \
        }                                                                      \
    } while (0)

#define RUN(test)                                  \
    do {                                           \
        int check_before_ = check_failures;        \
        test();                                    \
        fprintf(stderr, "%s %s\n",                 \
                check_failures == check_before_ ? "ok  " : "FAIL", #test); \
    } while (0)

static inline int check_summary(const char *suite)
{
    fprintf(stderr, "%s: %d checks, %d failed\n", suite, check_count, check_failures);
    return check_failures > 100 ? 100 : check_failures;
}

/* A small deterministic PRNG (xorshift64*) for property checks. */
static unsigned long long check_rng_state = 0x9E3779B97F4A7C15ull;

static inline unsigned long long check_rand(void)
{
    unsigned long long x = check_rng_state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    check_rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

#endif
