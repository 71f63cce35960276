/*
 * test_framing.c - unit tests of csrc/framing.c (echo_config_*, echo_scan):
 * pure functions, no sockets. pyecho/_framing.py is held to the same cases
 * by tests/test_framing.py and the fuzzers (fuzz/).
 */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "pyecho.h"

#define S(lit) ((const uint8_t *)(lit)), (sizeof(lit) - 1)

static echo_config cfg_mode(int mode)
{
    echo_config cfg;

    echo_config_default(&cfg);
    cfg.mode = mode;
    return cfg;
}

static size_t scan(const echo_config *cfg, int *cont, const uint8_t *buf,
                   size_t len, int *quit)
{
    return echo_scan(cfg, cont, buf, len, quit);
}

static void test_defaults(void)
{
    echo_config cfg;

    memset(&cfg, 0xA5, sizeof cfg);
    echo_config_default(&cfg);
    CHECK_EQ(cfg.mode, ECHO_MODE_SEED);
    CHECK_EQ(cfg.quit_len, 4);
    CHECK(memcmp(cfg.quit_word, "exit", 4) == 0);
    CHECK_EQ(cfg.bufsize, 99);
    CHECK_EQ(cfg.max_line, 64 * 1024);
    CHECK_EQ(cfg.max_pending, 256 * 1024);
    CHECK_EQ(cfg.max_clients, 0);
    CHECK_EQ(cfg.idle_timeout_ms, 0);
    CHECK_EQ(cfg.backlog, 128);
    CHECK_EQ(echo_config_check(&cfg), 0);
}

static void test_config_check(void)
{
    static const uint8_t word[256] = {'x'};
    echo_config cfg;

    CHECK_EQ(echo_config_check(NULL), (unsigned long long)-EINVAL);
#define BAD(field, value)                                                   \
    do {                                                                    \
        echo_config_default(&cfg);                                          \
        cfg.field = value;                                                  \
        CHECK_EQ(echo_config_check(&cfg), (unsigned long long)-EINVAL);     \
    } while (0)
#define GOOD(field, value)                        \
    do {                                          \
        echo_config_default(&cfg);                \
        cfg.field = value;                        \
        CHECK_EQ(echo_config_check(&cfg), 0);     \
    } while (0)
    BAD(mode, -1);
    BAD(mode, 3);
    GOOD(mode, ECHO_MODE_RAW);
    GOOD(mode, ECHO_MODE_LINE);
    BAD(quit_len, 0);
    BAD(quit_len, 256);
    GOOD(quit_len, 255);
    BAD(bufsize, 0);
    GOOD(bufsize, 1);
    GOOD(bufsize, (size_t)1 << 20);
    BAD(bufsize, ((size_t)1 << 20) + 1);
    BAD(bufsize, (size_t)-1);
    BAD(max_line, 0);
    GOOD(max_line, 1);
    GOOD(max_line, (size_t)1 << 24);
    BAD(max_line, ((size_t)1 << 24) + 1);
    BAD(max_pending, 0);
    GOOD(max_pending, 1);
    GOOD(max_pending, (size_t)1 << 30);
    BAD(max_pending, ((size_t)1 << 30) + 1);
    BAD(backlog, 0);
    BAD(backlog, -5);
    GOOD(backlog, 65535);
    BAD(backlog, 65536);
    GOOD(max_clients, 1u << 31);
    BAD(max_clients, (1u << 31) + 1);
    GOOD(idle_timeout_ms, 4000000000u);
    BAD(idle_timeout_ms, 4000000001u);
    GOOD(transport, ECHO_UDP);
    BAD(transport, 2);
    BAD(udp_guard, 2);
    GOOD(udp_rate, 1000000000u);
    BAD(udp_rate, 1000000001u);
    BAD(udp_rate_per_source, 1000000001u);
    BAD(udp_loop_limit, 1000000001u);

    /* A NULL quit word needs a zero length, and the other way round. */
    echo_config_default(&cfg);
    cfg.quit_word = NULL;
    CHECK_EQ(echo_config_check(&cfg), (unsigned long long)-EINVAL);
    cfg.quit_len = 0;
    CHECK_EQ(echo_config_check(&cfg), 0);
    cfg.quit_word = word;
    CHECK_EQ(echo_config_check(&cfg), (unsigned long long)-EINVAL);
#undef BAD
#undef GOOD
}

static void test_raw(void)
{
    echo_config cfg = cfg_mode(ECHO_MODE_RAW);
    int cont = 0, quit = 7;

    CHECK_EQ(scan(&cfg, &cont, S("exit"), &quit), 4);
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S("exit\n"), &quit), 5);
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S(""), &quit), 0);
    CHECK_EQ(scan(&cfg, &cont, S("a\0b"), &quit), 3);
    CHECK_EQ(cont, 0);
}

static void test_seed(void)
{
    echo_config cfg = cfg_mode(ECHO_MODE_SEED);
    int cont = 0, quit = 7;

    CHECK_EQ(scan(&cfg, &cont, S("hello"), &quit), 5);
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S("hello\n"), &quit), 5);
    CHECK_EQ(scan(&cfg, &cont, S("hello\n\n"), &quit), 6); /* one newline only */
    CHECK_EQ(scan(&cfg, &cont, S("\n"), &quit), 0);
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S(""), &quit), 0);
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S("exit"), &quit), 0);
    CHECK_EQ(quit, 1);
    CHECK_EQ(scan(&cfg, &cont, S("exit\n"), &quit), 0);
    CHECK_EQ(quit, 1);
    CHECK_EQ(scan(&cfg, &cont, S("exit\r\n"), &quit), 5); /* "exit\r" is not it */
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S("\0exit"), &quit), 5);
    CHECK_EQ(scan(&cfg, &cont, S("exits"), &quit), 5);
    CHECK_EQ(scan(&cfg, &cont, S("EXIT"), &quit), 4);
    CHECK_EQ(quit, 0);

    cfg.quit_word = NULL;
    cfg.quit_len = 0;
    CHECK_EQ(scan(&cfg, &cont, S("exit\n"), &quit), 4);
    CHECK_EQ(quit, 0);
    CHECK_EQ(cont, 0);
}

static void test_line(void)
{
    echo_config cfg = cfg_mode(ECHO_MODE_LINE);
    int cont = 0, quit = 7;

    CHECK_EQ(scan(&cfg, &cont, S(""), &quit), 0);
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S("partial"), &quit), 0);
    CHECK_EQ(scan(&cfg, &cont, S("a\nb"), &quit), 2);
    CHECK_EQ(scan(&cfg, &cont, S("a\nb\n"), &quit), 4);
    CHECK_EQ(scan(&cfg, &cont, S("\n\n\n"), &quit), 3);
    CHECK_EQ(scan(&cfg, &cont, S("exit"), &quit), 0); /* not a line yet */
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S("exit\n"), &quit), 0);
    CHECK_EQ(quit, 1);
    CHECK_EQ(scan(&cfg, &cont, S("exit\r\n"), &quit), 0);
    CHECK_EQ(quit, 1);
    CHECK_EQ(scan(&cfg, &cont, S("exit\r\r\n"), &quit), 7);
    CHECK_EQ(quit, 0);
    CHECK_EQ(scan(&cfg, &cont, S("a\nb\nexit\nignored\n"), &quit), 4);
    CHECK_EQ(quit, 1);
    CHECK_EQ(scan(&cfg, &cont, S(" exit\nexit \n"), &quit), 12);
    CHECK_EQ(quit, 0);
    CHECK_EQ(cont, 0);
}

static void test_long_lines(void)
{
    echo_config cfg = cfg_mode(ECHO_MODE_LINE);
    int cont = 0, quit = 7;

    cfg.max_line = 4;
    CHECK_EQ(scan(&cfg, &cont, S("abc"), &quit), 0);
    CHECK_EQ(cont, 0);
    CHECK_EQ(scan(&cfg, &cont, S("abcd"), &quit), 4); /* a full piece */
    CHECK_EQ(cont, 1);
    CHECK_EQ(scan(&cfg, &cont, S("exit\n"), &quit), 5); /* a tail: not the quit word */
    CHECK_EQ(quit, 0);
    CHECK_EQ(cont, 0);

    cont = 0;
    CHECK_EQ(scan(&cfg, &cont, S("abcdefg\n"), &quit), 8);
    CHECK_EQ(cont, 0);
    CHECK_EQ(scan(&cfg, &cont, S("abcdexit\n"), &quit), 9);
    CHECK_EQ(quit, 0);
    CHECK_EQ(cont, 0);
    /* "exit\n" is 5 bytes: a line longer than max_line = 4 is never quit. */
    CHECK_EQ(scan(&cfg, &cont, S("exit\n"), &quit), 5);
    CHECK_EQ(quit, 0);
    cfg.max_line = 5;
    cont = 0;
    CHECK_EQ(scan(&cfg, &cont, S("exit\n"), &quit), 0);
    CHECK_EQ(quit, 1);

    cfg.max_line = 1; /* every byte is a piece or a newline */
    cont = 0;
    CHECK_EQ(scan(&cfg, &cont, S("ab\nc"), &quit), 4);
    CHECK_EQ(cont, 1);
    CHECK_EQ(scan(&cfg, &cont, S("\n"), &quit), 1);
    CHECK_EQ(cont, 0);
}

/* Line framing must not depend on how reads split the stream: feeding a
 * stream whole or in random chunks (held bytes first, as the server does)
 * must echo the same bytes and find the quit word at the same place. */
static void test_line_chunking_is_irrelevant(void)
{
    static const uint8_t alphabet[] = "exit\n\r\nab";
    uint8_t stream[512], buf[1024];

    for (int round = 0; round < 20000; round++) {
        echo_config cfg = cfg_mode(ECHO_MODE_LINE);
        size_t len = check_rand() % sizeof stream, whole, out = 0, held = 0, pos = 0;
        int cont = 0, quit = 0, whole_quit, ok = 1;

        cfg.max_line = 1 + check_rand() % 12;
        if (check_rand() % 4 == 0) {
            cfg.quit_word = NULL;
            cfg.quit_len = 0;
        }
        for (size_t i = 0; i < len; i++)
            stream[i] = alphabet[check_rand() % (sizeof alphabet - 1)];
        whole = scan(&cfg, &cont, stream, len, &whole_quit);

        cont = 0;
        while (pos < len && !quit) {
            size_t n = 1 + check_rand() % 40, emit;

            if (n > len - pos)
                n = len - pos;
            memcpy(buf + held, stream + pos, n);
            pos += n;
            emit = scan(&cfg, &cont, buf, held + n, &quit);
            ok &= emit <= held + n;
            out += emit;
            held = held + n - emit;
            memmove(buf, buf + emit, held);
            ok &= quit || held < cfg.max_line; /* the held part stays short */
        }
        CHECK(ok);
        CHECK_EQ(out, whole);
        CHECK_EQ(quit, whole_quit);
        if (out != whole || quit != whole_quit)
            break; /* one report is enough */
    }
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_config_check);
    RUN(test_raw);
    RUN(test_seed);
    RUN(test_line);
    RUN(test_long_lines);
    RUN(test_line_chunking_is_irrelevant);
    return check_summary("test_framing");
}
