/*
 * test_timers.c - the server when one of its own timers cannot start: the
 * timer heap is shared with the connections' fault timers and may have to
 * grow, which can fail. The failure must not silently disable a feature
 * (here: the linger deadline): echo_server_run() returns the error, and the
 * next run re-arms the timer. CMake compiles the server for this test with
 * -Drealloc=timers_test_realloc, so the heap's growth can be made to fail.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "pyecho.h"

#undef realloc
void *realloc(void *p, size_t n); /* <stdlib.h> declared it under the macro */
static int fail_heap_growth;

void *timers_test_realloc(void *p, size_t n);
void *timers_test_realloc(void *p, size_t n)
{
    /* The loop's timer heap growing past its first 64 slots (loop.c). */
    if (fail_heap_growth && n == 128 * sizeof(void *)) {
        fail_heap_growth = 0;
        return NULL;
    }
    return realloc(p, n);
}

static int closed[ECHO_CLOSE_REASONS];

static void on_event(void *ctx, const echo_event *ev)
{
    (void)ctx;
    if (ev->kind == ECHO_EVENT_CLOSE)
        closed[ev->reason]++;
}

static int tcp_to(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(fd >= 0);
    CHECK_EQ(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

#define CLIENTS 64 /* one reset_after timer each: the heap's first 64 slots */

static void test_a_linger_timer_that_cannot_start(void)
{
    echo_config cfg;
    echo_faults f;
    echo_server *srv = NULL;
    echo_stats s;
    char host[64];
    int port = 0, fds[CLIENTS], rc;

    echo_config_default(&cfg); /* seed mode, quit word "exit" */
    cfg.idle_timeout_ms = 0;   /* no idle timer: only the connections' */
    cfg.max_clients = 0;
    CHECK_EQ(echo_server_new(&cfg, "127.0.0.1", 0, &srv), 0);
    CHECK_EQ(echo_server_address(srv, host, sizeof host, &port), 0);
    echo_server_set_event_fn(srv, on_event, NULL);
    echo_faults_default(&f);
    f.reset_after_ms = 1000000; /* a pending timer per connection, far away */
    CHECK_EQ(echo_server_set_faults(srv, &f), 0);
    for (int i = 0; i < CLIENTS; i++)
        fds[i] = tcp_to(port);
    for (int i = 0; i < 100; i++) {
        CHECK_EQ(echo_server_run(srv, 20), 1);
        echo_server_stats(srv, &s);
        if (s.accepted == CLIENTS)
            break;
    }
    CHECK_EQ(s.accepted, CLIENTS);
    CHECK_EQ(s.open, CLIENTS);

    /* The quit word: the connection lingers, and its deadline needs a 65th
     * timer, which cannot start. The run says so. */
    fail_heap_growth = 1;
    CHECK_EQ(send(fds[0], "exit", 4, 0), 4);
    rc = 1;
    for (int i = 0; i < 100 && rc == 1; i++)
        rc = echo_server_run(srv, 20);
    CHECK_EQ(rc, -ENOMEM);
    CHECK_EQ(fail_heap_growth, 0);

    /* The next run re-arms it: the lingering connection ends after 2 s
     * (LINGER_MS), as the quit word's. */
    for (int i = 0; i < 400 && closed[ECHO_CLOSE_QUIT] == 0; i++)
        CHECK_EQ(echo_server_run(srv, 20), 1);
    CHECK_EQ(closed[ECHO_CLOSE_QUIT], 1);
    echo_server_stats(srv, &s);
    CHECK_EQ(s.open, CLIENTS - 1);

    for (int i = 0; i < CLIENTS; i++)
        close(fds[i]);
    echo_server_free(srv);
}

int main(void)
{
    RUN(test_a_linger_timer_that_cannot_start);
    return check_summary("test_timers");
}
