/*
 * test_server.c - the server and client of the C core driven end to end in
 * one process, over loopback: every mode, quit words, long lines, half-close,
 * reset, max_clients, idle_timeout, backpressure, stop with clients open.
 * Its main purpose is the sanitizer build (PYECHO_SANITIZE): run as a plain
 * C program, LeakSanitizer sees every allocation of server.c, client.c,
 * outbuf.c and net.c, which it cannot inside a Python process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "pyecho.h"
#include "udp.h"

typedef struct running {
    echo_server *srv;
    pthread_t thread;
    int port, rc, opens, closes, drop_events, dropped_reported;
    int reasons[ECHO_CLOSE_REASONS];
} running;

static void on_event(void *ctx, const echo_event *ev)
{
    running *r = ctx;

    if (ev->kind == ECHO_EVENT_DROP) {
        r->drop_events++;
        r->dropped_reported += (int)ev->count;
    } else if (ev->kind == ECHO_EVENT_OPEN) {
        r->opens++;
    } else {
        r->closes++;
        r->reasons[ev->reason]++;
    }
}

static void *serve(void *arg)
{
    running *r = arg;

    r->rc = echo_server_run(r->srv, -1);
    return NULL;
}

static void start_on(running *r, const echo_config *cfg, const char *where)
{
    char host[64];

    memset(r, 0, sizeof *r);
    CHECK_EQ(echo_server_new(cfg, where, 0, &r->srv), 0);
    CHECK_EQ(echo_server_address(r->srv, host, sizeof host, &r->port), 0);
    echo_server_set_event_fn(r->srv, on_event, r);
    CHECK_EQ(pthread_create(&r->thread, NULL, serve, r), 0);
}

static void start(running *r, const echo_config *cfg)
{
    start_on(r, cfg, "127.0.0.1");
}

/* Wait (bounded) until the server has no connection open. */
static void drain(running *r)
{
    echo_stats s;

    for (int i = 0; i < 2000; i++) {
        echo_server_stats(r->srv, &s);
        if (s.open == 0)
            return;
        usleep(5000);
    }
    CHECK(!"connections still open after 10 s");
}

static echo_stats stop(running *r)
{
    echo_stats s;

    CHECK_EQ(echo_server_stop(r->srv), 0);
    CHECK_EQ(pthread_join(r->thread, NULL), 0);
    CHECK_EQ(r->rc, 0);
    echo_server_stats(r->srv, &s);
    echo_server_free(r->srv);
    CHECK_EQ(r->opens, r->closes);
    return s;
}

static echo_client *connect_to(const echo_config *cfg, const running *r)
{
    echo_client *cli = NULL;

    CHECK_EQ(echo_client_new(cfg, "127.0.0.1", r->port, 10000, &cli), 0);
    return cli;
}

/* echo() data and compare the reply with want; returns the echo_reply. */
static int echo_is(echo_client *cli, const echo_config *cfg, const char *data,
                   size_t len, const char *want, size_t want_len)
{
    size_t cap = len + cfg->max_line, got = 0;
    uint8_t *reply = malloc(cap);
    int rc = echo_client_echo(cli, (const uint8_t *)data, len, reply, cap, &got);

    CHECK_EQ(got, want_len);
    CHECK(got == want_len && memcmp(reply, want, want_len) == 0);
    free(reply);
    return rc;
}

static void test_raw(void)
{
    echo_config cfg;
    running r;
    size_t n = 4u << 20;
    char *big = malloc(n);
    echo_client *cli;
    echo_stats s;

    echo_config_default(&cfg);
    cfg.mode = ECHO_MODE_RAW;
    cfg.max_pending = 1024; /* backpressure all the way */
    start(&r, &cfg);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)(i * 7 + (i >> 12));
    cli = connect_to(&cfg, &r);
    CHECK_EQ(echo_is(cli, &cfg, big, n, big, n), ECHO_REPLY_OPEN);
    CHECK_EQ(echo_is(cli, &cfg, "exit", 4, "exit", 4), ECHO_REPLY_OPEN);
    echo_client_free(cli);
    drain(&r);
    s = stop(&r);
    CHECK_EQ(s.bytes_in, n + 4);
    CHECK_EQ(s.bytes_out, n + 4);
    CHECK_EQ(s.closed[ECHO_CLOSE_PEER], 1);
    free(big);
}

static void test_line(void)
{
    echo_config cfg;
    running r;
    echo_client *cli;
    uint8_t buf[64];
    size_t got = 0, total = 0;
    echo_stats s;

    echo_config_default(&cfg);
    cfg.mode = ECHO_MODE_LINE;
    cfg.max_line = 8;
    start(&r, &cfg);
    cli = connect_to(&cfg, &r);
    CHECK_EQ(echo_is(cli, &cfg, "ab\ncd\n", 6, "ab\ncd\n", 6), ECHO_REPLY_OPEN);
    CHECK_EQ(echo_is(cli, &cfg, "0123456789\n", 11, "0123456789\n", 11), ECHO_REPLY_OPEN);
    CHECK_EQ(echo_is(cli, &cfg, "x\nexit\nlost\n", 12, "x\n", 2), ECHO_REPLY_CLOSED);
    echo_client_free(cli);

    /* Half-close: the partial line comes back, then EOF. */
    cli = connect_to(&cfg, &r);
    CHECK_EQ(echo_client_send(cli, (const uint8_t *)"one\npart", 8), 0);
    CHECK_EQ(echo_client_shutdown_write(cli), 0);
    do {
        CHECK_EQ(echo_client_recv(cli, buf + total, sizeof buf - total, &got), 0);
        total += got;
    } while (got > 0 && total < sizeof buf);
    CHECK_EQ(total, 8);
    CHECK(memcmp(buf, "one\npart", 8) == 0);
    echo_client_free(cli);
    drain(&r);
    s = stop(&r);
    CHECK_EQ(s.closed[ECHO_CLOSE_QUIT], 1);
    CHECK_EQ(s.closed[ECHO_CLOSE_PEER], 1);
}

static void test_seed_reset_and_stop(void)
{
    echo_config cfg;
    running r;
    echo_client *a, *b, *open[3];
    struct linger lin = {1, 0};
    echo_stats s;

    echo_config_default(&cfg);
    start(&r, &cfg);
    a = connect_to(&cfg, &r);
    CHECK_EQ(echo_is(a, &cfg, "hello\n", 6, "hello", 5), ECHO_REPLY_OPEN);
    CHECK_EQ(echo_is(a, &cfg, "exit\n", 5, "", 0), ECHO_REPLY_CLOSED);
    echo_client_free(a);

    b = connect_to(&cfg, &r); /* reset with data in flight */
    CHECK_EQ(echo_is(b, &cfg, "hi", 2, "hi", 2), ECHO_REPLY_OPEN);
    CHECK_EQ(echo_client_send(b, (const uint8_t *)"pending", 7), 0);
    setsockopt(echo_client_fileno(b), SOL_SOCKET, SO_LINGER, &lin, sizeof lin);
    echo_client_free(b);
    for (int i = 0; i < 2000 && r.reasons[ECHO_CLOSE_RESET] == 0; i++)
        usleep(5000);

    for (int i = 0; i < 3; i++) { /* still open when the server stops */
        open[i] = connect_to(&cfg, &r);
        CHECK_EQ(echo_is(open[i], &cfg, "x", 1, "x", 1), ECHO_REPLY_OPEN);
    }
    s = stop(&r);
    CHECK_EQ(s.closed[ECHO_CLOSE_QUIT], 1);
    CHECK_EQ(s.closed[ECHO_CLOSE_RESET], 1);
    CHECK_EQ(s.closed[ECHO_CLOSE_SHUTDOWN], 3);
    for (int i = 0; i < 3; i++)
        echo_client_free(open[i]);
}

static void test_limits(void)
{
    echo_config cfg;
    running r;
    echo_client *a, *b, *c;
    uint8_t byte;
    size_t got = 1;
    echo_stats s;

    echo_config_default(&cfg);
    cfg.mode = ECHO_MODE_RAW;
    cfg.max_clients = 1;
    cfg.idle_timeout_ms = 100;
    start(&r, &cfg);
    a = connect_to(&cfg, &r);
    CHECK_EQ(echo_is(a, &cfg, "a", 1, "a", 1), ECHO_REPLY_OPEN);
    b = connect_to(&cfg, &r); /* over max_clients: closed at once */
    CHECK_EQ(echo_client_recv(b, &byte, 1, &got), 0);
    CHECK_EQ(got, 0);
    got = 1;
    CHECK_EQ(echo_client_recv(a, &byte, 1, &got), 0); /* then a goes idle */
    CHECK_EQ(got, 0);
    c = connect_to(&cfg, &r); /* and the slot is free again */
    CHECK_EQ(echo_is(c, &cfg, "c", 1, "c", 1), ECHO_REPLY_OPEN);
    echo_client_free(a);
    echo_client_free(b);
    echo_client_free(c);
    drain(&r);
    s = stop(&r);
    CHECK_EQ(s.rejected, 1);
    CHECK_EQ(s.accepted, 2);
    CHECK_EQ(s.closed[ECHO_CLOSE_IDLE], 1);
    CHECK_EQ(s.closed[ECHO_CLOSE_PEER], 1);
}

static void test_bad_arguments(void)
{
    echo_config cfg;
    echo_server *srv = NULL;
    echo_client *cli = NULL;

    echo_config_default(&cfg);
    CHECK(echo_server_new(&cfg, "127.0.0.1", -1, &srv) < 0);
    CHECK(echo_server_new(&cfg, "127.0.0.1", 65536, &srv) < 0);
    CHECK(echo_server_new(&cfg, "not-an-address", 0, &srv) < 0);
    CHECK(echo_server_new(&cfg, NULL, 0, &srv) < 0);
    CHECK(echo_server_new(NULL, "127.0.0.1", 0, &srv) < 0);
    CHECK(echo_client_new(&cfg, "127.0.0.1", 0, 100, &cli) < 0);
    cfg.bufsize = 0;
    CHECK(echo_server_new(&cfg, "127.0.0.1", 0, &srv) < 0);
    CHECK(srv == NULL && cli == NULL);
    CHECK(echo_server_run(NULL, 0) < 0);
    CHECK(echo_server_stop(NULL) < 0);
    CHECK(echo_client_send(NULL, NULL, 0) < 0);
    echo_server_free(NULL);
    echo_client_free(NULL);
}

/* UDP: datagrams of every size come back whole, over IPv4 and IPv6. */
static void test_udp_echo(void)
{
    static const char *hosts[] = {"127.0.0.1", "::1"};
    static const size_t sizes[] = {0, 1, 1000, 65507};
    uint8_t *data = malloc(65507), *reply = malloc(65507);

    for (size_t i = 0; i < 65507; i++)
        data[i] = (uint8_t)(i * 13 + 1);
    for (int h = 0; h < 2; h++) {
        echo_config cfg;
        running r;
        echo_client *cli = NULL;
        echo_stats s;
        uint64_t bytes = 0;

        echo_config_default(&cfg);
        cfg.transport = ECHO_UDP;
        start_on(&r, &cfg, hosts[h]);
        CHECK_EQ(echo_client_new(&cfg, hosts[h], r.port, 5000, &cli), 0);
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t got = 0;

            CHECK_EQ(echo_client_echo(cli, data, sizes[k], reply, sizes[k], &got),
                     ECHO_REPLY_OPEN);
            CHECK_EQ(got, sizes[k]);
            CHECK(memcmp(reply, data, sizes[k]) == 0);
            bytes += sizes[k];
        }
        CHECK_EQ(echo_client_shutdown_write(cli), -EOPNOTSUPP);
        echo_client_free(cli);
        s = stop(&r);
        CHECK_EQ(s.datagrams_in, 4);
        CHECK_EQ(s.datagrams_out, 4);
        CHECK_EQ(s.bytes_in, bytes);
        CHECK_EQ(s.bytes_out, bytes);
        CHECK_EQ(s.accepted, 0);
    }
    free(data);
    free(reply);
}

static int udp_socket_from(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0), one = 1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_to(int fd, int port, int n)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < n; i++)
        CHECK_EQ(sendto(fd, "x", 1, 0, (struct sockaddr *)&a, sizeof a), 1);
}

/* Wait (bounded) until the server has seen n datagrams. */
static echo_stats wait_datagrams(running *r, uint64_t n)
{
    echo_stats s;

    for (int i = 0; i < 2000; i++) {
        echo_server_stats(r->srv, &s);
        if (s.datagrams_in >= n)
            break;
        usleep(2000);
    }
    return s;
}

/* The loop guard: never answer a self-answering service's port (as root we
 * can bind one), port 0 or a multicast or broadcast source. */
static void test_udp_guard(void)
{
    echo_config cfg;
    running r;
    echo_stats s;
    net_addr a;
    int fd;

    memset(&a, 0, sizeof a);
    a.in4.sin_family = AF_INET;
    a.in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.in4.sin_port = htons(7);
    CHECK(udp_guarded(&a));
    a.in4.sin_port = htons(0);
    CHECK(udp_guarded(&a));
    a.in4.sin_port = htons(19);
    CHECK(udp_guarded(&a));
    a.in4.sin_port = htons(1024);
    CHECK(!udp_guarded(&a));
    a.in4.sin_addr.s_addr = htonl(0xe0000001); /* 224.0.0.1 */
    CHECK(udp_guarded(&a));
    a.in4.sin_addr.s_addr = htonl(0xffffffff);
    CHECK(udp_guarded(&a));
    memset(&a, 0, sizeof a);
    a.in6.sin6_family = AF_INET6;
    a.in6.sin6_port = htons(40000);
    a.in6.sin6_addr.s6_addr[15] = 1; /* ::1 */
    CHECK(!udp_guarded(&a));
    a.in6.sin6_addr.s6_addr[0] = 0xff; /* ff00::1 */
    CHECK(udp_guarded(&a));
    memset(&a.in6.sin6_addr, 0, 16); /* ::ffff:224.0.0.1 */
    a.in6.sin6_addr.s6_addr[10] = a.in6.sin6_addr.s6_addr[11] = 0xff;
    a.in6.sin6_addr.s6_addr[12] = 224;
    a.in6.sin6_addr.s6_addr[15] = 1;
    CHECK(udp_guarded(&a));

    echo_config_default(&cfg);
    cfg.transport = ECHO_UDP;
    start(&r, &cfg);
    fd = udp_socket_from(7); /* needs root: skipped otherwise */
    if (fd >= 0) {
        send_to(fd, r.port, 3);
        s = wait_datagrams(&r, 3);
        CHECK_EQ(s.dropped[ECHO_DROP_GUARD], 3);
        CHECK_EQ(s.datagrams_out, 0);
        close(fd);
    }
    s = stop(&r);
    CHECK_EQ(r.dropped_reported > 0, fd >= 0);
}

/* The per-source limit: a burst beyond it is dropped and counted, and the
 * drop is reported at most once a second. */
static void test_udp_rate(void)
{
    echo_config cfg;
    running r;
    echo_stats s;
    int fd;

    echo_config_default(&cfg);
    cfg.transport = ECHO_UDP;
    cfg.udp_rate_per_source = 10;
    start(&r, &cfg);
    fd = udp_socket_from(0);
    send_to(fd, r.port, 30);
    s = wait_datagrams(&r, 30);
    CHECK_EQ(s.datagrams_in, 30);
    CHECK(s.datagrams_out >= 10 && s.datagrams_out <= 12);
    CHECK_EQ(s.dropped[ECHO_DROP_RATE_SOURCE], 30 - s.datagrams_out);
    CHECK_EQ(r.drop_events, 1);
    CHECK_EQ(r.dropped_reported, 1);
    close(fd);
    stop(&r);
}

/* ---- faults --------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int tcp_to(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {5, 0};

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    CHECK_EQ(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Read until EOF, error or `want` bytes; how many came, and the errno of
 * an error (0 at EOF). */
static size_t read_all(int fd, uint8_t *buf, size_t want, int *err)
{
    size_t got = 0;

    *err = 0;
    while (got < want) {
        ssize_t n = recv(fd, buf + got, want - got, 0);

        if (n <= 0) {
            *err = n < 0 ? errno : 0;
            break;
        }
        got += (size_t)n;
    }
    return got;
}

static void wait_closed(running *r, int reason, int n)
{
    for (int i = 0; i < 2000 && r->reasons[reason] < n; i++)
        usleep(2000);
    CHECK_EQ(r->reasons[reason], n);
}

static void test_faults_latency_limit_reset(void)
{
    echo_config cfg;
    echo_faults f;
    running r;
    uint8_t buf[64];
    uint64_t t0;
    int fd, err;

    echo_config_default(&cfg);
    cfg.mode = ECHO_MODE_RAW;
    start(&r, &cfg);
    echo_faults_default(&f);
    f.latency_ms = 60;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    fd = tcp_to(r.port);
    t0 = now_ms();
    CHECK_EQ(send(fd, "hello", 5, 0), 5);
    CHECK_EQ(read_all(fd, buf, 5, &err), 5);
    CHECK(now_ms() - t0 >= 60);
    CHECK(now_ms() - t0 < 1000);

    /* Back to a plain echo at runtime, on the open connection. */
    CHECK_EQ(echo_server_set_faults(r.srv, NULL), 0);
    usleep(20000);
    t0 = now_ms();
    CHECK_EQ(send(fd, "x", 1, 0), 1);
    CHECK_EQ(read_all(fd, buf, 1, &err), 1);
    CHECK(now_ms() - t0 < 50);
    close(fd);

    /* limit: EOF after exactly that many bytes, reason "limit". */
    echo_faults_default(&f);
    f.limit = 7;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    CHECK_EQ(send(fd, "0123456789", 10, 0), 10);
    CHECK_EQ(read_all(fd, buf, sizeof buf, &err), 7);
    CHECK_EQ(err, 0);
    CHECK(memcmp(buf, "0123456", 7) == 0);
    close(fd);
    wait_closed(&r, ECHO_CLOSE_LIMIT, 1);

    /* reset_after: the client sees a reset, reason "reset_after". */
    echo_faults_default(&f);
    f.reset_after_ms = 50;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    t0 = now_ms();
    CHECK_EQ(read_all(fd, buf, sizeof buf, &err), 0);
    CHECK_EQ(err, ECONNRESET);
    CHECK(now_ms() - t0 >= 40);
    close(fd);
    wait_closed(&r, ECHO_CLOSE_RESET_AFTER, 1);

    /* refuse (always): reset at once, reason "refused". */
    echo_faults_default(&f);
    f.refuse_ppm = 1000000;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    CHECK_EQ(read_all(fd, buf, sizeof buf, &err), 0);
    CHECK_EQ(err, ECONNRESET);
    close(fd);
    wait_closed(&r, ECHO_CLOSE_REFUSED, 1);
    stop(&r);
}

static void test_faults_pacing(void)
{
    echo_config cfg;
    echo_faults f;
    running r;
    static uint8_t data[20000], buf[20000];
    uint64_t t0;
    ssize_t n;
    int fd, err, pieces = 0;
    size_t got = 0;

    echo_config_default(&cfg);
    cfg.mode = ECHO_MODE_RAW;
    start(&r, &cfg);

    /* slice: pieces of at most 100 bytes, 10 ms apart. */
    echo_faults_default(&f);
    f.slice = 100;
    f.slice_delay_ms = 10;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    t0 = now_ms();
    CHECK_EQ(send(fd, data, 500, 0), 500);
    while (got < 500 && (n = recv(fd, buf, sizeof buf, 0)) > 0) {
        CHECK(n <= 100);
        got += (size_t)n;
        pieces++;
    }
    CHECK_EQ(got, 500);
    CHECK(pieces >= 5);
    CHECK(now_ms() - t0 >= 40);
    close(fd);

    /* rate: 20,000 bytes at 100,000 bytes/s take at least ~0.2 s. */
    echo_faults_default(&f);
    f.rate = 100000;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    t0 = now_ms();
    CHECK_EQ(send(fd, data, sizeof data, 0), (ssize_t)sizeof data);
    CHECK_EQ(read_all(fd, buf, sizeof data, &err), sizeof data);
    CHECK(now_ms() - t0 >= 180);
    CHECK(now_ms() - t0 < 2000);
    close(fd);

    /* stall_after: 3 bytes, then nothing (the rest is kept, the connection
     * no longer read); lifted, the rest follows in order. */
    echo_faults_default(&f);
    f.stall_after = 3;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    CHECK_EQ(send(fd, "abcdef", 6, 0), 6);
    CHECK_EQ(read_all(fd, buf, 3, &err), 3);
    {
        struct timeval tv = {0, 100000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    CHECK_EQ(recv(fd, buf, 1, 0), -1);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    CHECK_EQ(send(fd, "gh", 2, 0), 2);
    CHECK_EQ(echo_server_set_faults(r.srv, NULL), 0);
    CHECK_EQ(read_all(fd, buf, 5, &err), 5);
    CHECK(memcmp(buf, "defgh", 5) == 0);
    close(fd);

    /* accept_delay and close_delay. */
    echo_faults_default(&f);
    f.accept_delay_ms = 50;
    f.close_delay_ms = 50;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    t0 = now_ms();
    CHECK_EQ(send(fd, "ab", 2, 0), 2);
    CHECK_EQ(read_all(fd, buf, 2, &err), 2);
    CHECK(now_ms() - t0 >= 45);
    shutdown(fd, SHUT_WR);
    t0 = now_ms();
    CHECK_EQ(read_all(fd, buf, 1, &err), 0); /* EOF, after close_delay */
    CHECK(now_ms() - t0 >= 45);
    close(fd);
    stop(&r);
}

/* Regressions: a limit lowered at runtime below what a connection echoed
 * already ends it (it used to wrap a size_t and spin the loop forever), and
 * the rate's bucket starts full (at 1 byte/s the first byte goes at once). */
static void test_faults_changed_under_way(void)
{
    echo_config cfg;
    echo_faults f;
    running r;
    static uint8_t buf[256];
    uint64_t t0;
    int fd, err;

    echo_config_default(&cfg);
    cfg.mode = ECHO_MODE_RAW;
    start(&r, &cfg);
    echo_faults_default(&f);
    f.limit = 1000;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    memset(buf, 'x', 200);
    CHECK_EQ(send(fd, buf, 200, 0), 200);
    CHECK_EQ(read_all(fd, buf, 200, &err), 200);
    f.limit = 100;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    CHECK_EQ(send(fd, "y", 1, 0), 1);
    CHECK_EQ(read_all(fd, buf, sizeof buf, &err), 0); /* EOF, nothing more */
    CHECK_EQ(err, 0);
    close(fd);
    wait_closed(&r, ECHO_CLOSE_LIMIT, 1);

    echo_faults_default(&f);
    f.rate = 1;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = tcp_to(r.port);
    t0 = now_ms();
    CHECK_EQ(send(fd, "ab", 2, 0), 2);
    CHECK_EQ(read_all(fd, buf, 1, &err), 1);
    CHECK(now_ms() - t0 < 500);
    CHECK_EQ(read_all(fd, buf, 1, &err), 1); /* the next one, a second later */
    CHECK(now_ms() - t0 >= 900);
    close(fd);
    stop(&r);
}

static void test_faults_udp(void)
{
    echo_config cfg;
    echo_faults f;
    running r;
    echo_stats s;
    uint8_t buf[16];
    int fd;
    struct timeval tv = {0, 300000};

    echo_config_default(&cfg);
    cfg.transport = ECHO_UDP;
    start(&r, &cfg);
    echo_faults_default(&f);
    f.rate = 1;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), -EINVAL); /* TCP only */
    echo_faults_default(&f);
    f.duplicate_ppm = 1000000;
    f.latency_ms = 30;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    fd = udp_socket_from(0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    send_to(fd, r.port, 1);
    CHECK_EQ(recv(fd, buf, sizeof buf, 0), 1);
    CHECK_EQ(recv(fd, buf, sizeof buf, 0), 1); /* the duplicate */
    echo_faults_default(&f);
    f.drop_ppm = 1000000;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    send_to(fd, r.port, 1);
    CHECK_EQ(recv(fd, buf, sizeof buf, 0), -1);
    s = stop(&r);
    CHECK_EQ(s.datagrams_out, 2);
    CHECK_EQ(s.dropped[ECHO_DROP_FAULT], 1);
    close(fd);
}

/* A signal while serving: echo_server_run() returns -EINTR (not 1, which
 * means the time ran out), so the caller can run its handlers and go on. */
static void on_usr1(int sig)
{
    (void)sig;
}

static void *serve_forever(void *arg)
{
    running *r = arg;

    r->rc = echo_server_run(r->srv, -1);
    return NULL;
}

static void test_a_signal_returns_eintr(void)
{
    echo_config cfg;
    running r;
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART: epoll_wait is interrupted */
    CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
    echo_config_default(&cfg);
    memset(&r, 0, sizeof r);
    CHECK_EQ(echo_server_new(&cfg, "127.0.0.1", 0, &r.srv), 0);
    r.rc = 99;
    CHECK_EQ(pthread_create(&r.thread, NULL, serve_forever, &r), 0);
    usleep(50000); /* let it sleep in the loop */
    CHECK_EQ(pthread_kill(r.thread, SIGUSR1), 0);
    CHECK_EQ(pthread_join(r.thread, NULL), 0);
    CHECK_EQ(r.rc, -EINTR);
    CHECK_EQ(echo_server_run(r.srv, 0), 1); /* and it serves on */
    echo_server_free(r.srv);
    signal(SIGUSR1, SIG_DFL);
}

int main(void)
{
    RUN(test_raw);
    RUN(test_line);
    RUN(test_seed_reset_and_stop);
    RUN(test_limits);
    RUN(test_bad_arguments);
    RUN(test_udp_echo);
    RUN(test_udp_guard);
    RUN(test_udp_rate);
    RUN(test_faults_latency_limit_reset);
    RUN(test_faults_changed_under_way);
    RUN(test_faults_pacing);
    RUN(test_faults_udp);
    RUN(test_a_signal_returns_eintr);
    return check_summary("test_server");
}
