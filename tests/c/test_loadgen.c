/*
 * test_loadgen.c - the load generator (loadgen.c, loadgen_udp.c: the
 * benchmark's own library, pyecho_loadgen.h) against the C core's own server
 * in one process, over loopback, TCP and UDP: a correct
 * server passes, a server that drops or duplicates datagrams (its faults) is
 * caught, and bad arguments and error paths free what they allocated. Its
 * main purpose is the sanitizer build: LeakSanitizer sees every allocation
 * of the load generator here, which it cannot inside Python. (The Python
 * tests, tests/test_loadgen.py, corrupt datagrams in ways no fault does.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "pyecho.h"
#include "pyecho_loadgen.h"

/* The load generator's header has its own names for the server's values. */
_Static_assert((int)ECHO_LOADGEN_TCP == (int)ECHO_TCP &&
                   (int)ECHO_LOADGEN_UDP == (int)ECHO_UDP,
               "transports");
_Static_assert((int)ECHO_LOADGEN_RAW == (int)ECHO_MODE_RAW &&
                   (int)ECHO_LOADGEN_LINE == (int)ECHO_MODE_LINE &&
                   (int)ECHO_LOADGEN_SEED == (int)ECHO_MODE_SEED,
               "modes");

typedef struct running {
    echo_server *srv;
    pthread_t thread;
    int port, rc;
} running;

static void *serve(void *arg)
{
    running *r = arg;

    r->rc = echo_server_run(r->srv, -1);
    return NULL;
}

static void start(running *r, int transport, const char *host)
{
    echo_config cfg;
    char bound[64];

    memset(r, 0, sizeof *r);
    echo_config_default(&cfg);
    cfg.transport = transport;
    cfg.mode = ECHO_MODE_RAW;
    if (transport == ECHO_UDP)
        cfg.udp_rate = cfg.udp_rate_per_source = 0; /* not what is tested */
    CHECK_EQ(echo_server_new(&cfg, host, 0, &r->srv), 0);
    CHECK_EQ(echo_server_address(r->srv, bound, sizeof bound, &r->port), 0);
    CHECK_EQ(pthread_create(&r->thread, NULL, serve, r), 0);
}

static echo_stats stop(running *r)
{
    echo_stats s;

    CHECK_EQ(echo_server_stop(r->srv), 0);
    CHECK_EQ(pthread_join(r->thread, NULL), 0);
    CHECK_EQ(r->rc, 0);
    echo_server_stats(r->srv, &s);
    echo_server_free(r->srv);
    return s;
}

static echo_loadgen_config config(int transport, uint32_t conns, uint32_t depth, size_t size)
{
    echo_loadgen_config cfg;

    memset(&cfg, 0, sizeof cfg);
    cfg.transport = transport;
    cfg.connections = conns;
    cfg.depth = depth;
    cfg.msg_size = size;
    cfg.mode = ECHO_MODE_RAW;
    cfg.timeout_ms = 3000;
    cfg.loss_timeout_ms = 50;
    return cfg;
}

static void test_abi(void)
{
    CHECK_EQ(echo_loadgen_abi_version(), ECHO_LOADGEN_ABI_VERSION);
    CHECK_EQ(echo_loadgen_abi_sizeof("echo_loadgen_config"), sizeof(echo_loadgen_config));
    CHECK_EQ(echo_loadgen_abi_sizeof("echo_loadgen_result"), sizeof(echo_loadgen_result));
    CHECK_EQ(echo_loadgen_abi_sizeof("echo_config"), 0);
    CHECK_EQ(echo_loadgen_abi_sizeof(NULL), 0);
}

static void test_bad_config(void)
{
    echo_loadgen_config cfg = config(ECHO_UDP, 1, 1, 64);
    echo_loadgen *lg = NULL;

    CHECK_EQ(echo_loadgen_new(NULL, &lg), -EINVAL);
    cfg.msg_size = 7; /* no room for the tag */
    CHECK_EQ(echo_loadgen_new(&cfg, &lg), -EINVAL);
    cfg.msg_size = 65508;
    CHECK_EQ(echo_loadgen_new(&cfg, &lg), -EINVAL);
    cfg.msg_size = 64;
    cfg.mode = ECHO_MODE_LINE;
    CHECK_EQ(echo_loadgen_new(&cfg, &lg), -EINVAL);
    cfg.mode = ECHO_MODE_RAW;
    cfg.transport = 2;
    CHECK_EQ(echo_loadgen_new(&cfg, &lg), -EINVAL);
    CHECK(lg == NULL);
}

/* Both transports, both families: every echo verified, nothing lost, the
 * server's counts agree with the load generator's. */
static void test_correct_server(void)
{
    static const char *hosts[] = {"127.0.0.1", "::1"};

    for (int t = ECHO_TCP; t <= ECHO_UDP; t++) {
        for (int h = 0; h < 2; h++) {
            echo_loadgen_config cfg = config(t, 3, 8, 100);
            echo_loadgen_result res;
            echo_loadgen *lg = NULL;
            uint64_t rts = 0;
            running r;
            echo_stats s;

            start(&r, t, hosts[h]);
            CHECK_EQ(echo_loadgen_new(&cfg, &lg), 0);
            CHECK_EQ(echo_loadgen_connect(lg, hosts[h], r.port, &res), 0);
            CHECK_EQ(echo_loadgen_open(lg), 3);
            for (int run = 0; run < 2; run++) {
                CHECK_EQ(echo_loadgen_run(lg, 50, &res), 0);
                CHECK(res.round_trips > 0);
                CHECK_EQ(res.bytes, res.round_trips * 100);
                CHECK_EQ(res.lost, 0);
                CHECK_EQ(res.lat_count, res.round_trips);
                CHECK(res.lat_min_ns <= res.lat_p50_ns && res.lat_p50_ns <= res.lat_max_ns);
                rts += res.round_trips;
            }
            echo_loadgen_free(lg);
            s = stop(&r);
            CHECK_EQ(s.bytes_in, (rts + 3) * 100);
            CHECK_EQ(s.bytes_out, (rts + 3) * 100);
            if (t == ECHO_UDP)
                CHECK_EQ(s.datagrams_out, rts + 3);
        }
    }
}

/* The server's own faults: every datagram dropped is counted lost (and the
 * run still ends); every datagram duplicated is an error. */
static void test_udp_drops_and_duplicates(void)
{
    echo_loadgen_config cfg = config(ECHO_UDP, 2, 4, 64);
    echo_loadgen_result res;
    echo_loadgen *lg = NULL;
    echo_faults f;
    running r;
    echo_stats s;

    start(&r, ECHO_UDP, "127.0.0.1");
    CHECK_EQ(echo_loadgen_new(&cfg, &lg), 0);
    CHECK_EQ(echo_loadgen_connect(lg, "127.0.0.1", r.port, &res), 0);
    echo_faults_default(&f);
    f.drop_ppm = 1000000;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    CHECK_EQ(echo_loadgen_run(lg, 120, &res), 0);
    CHECK_EQ(res.round_trips, 0);
    CHECK(res.lost >= 8); /* the first window at least */
    CHECK_EQ(res.late, 0);
    echo_faults_default(&f);
    f.duplicate_ppm = 1000000;
    CHECK_EQ(echo_server_set_faults(r.srv, &f), 0);
    usleep(20000);
    CHECK_EQ(echo_loadgen_run(lg, 200, &res), -EPROTO);
    CHECK_EQ(res.error_kind, ECHO_LOADGEN_EXTRA);
    CHECK(res.error_datagram != UINT64_MAX);
    CHECK(res.error_conn < 2);
    /* After an error the connections are in an unknown state: free them. */
    echo_loadgen_free(lg);
    s = stop(&r);
    CHECK(s.dropped[ECHO_DROP_FAULT] >= 8);
}

/* Nothing listens: connecting fails; whatever was opened is freed. */
static void test_udp_refused(void)
{
    echo_loadgen_config cfg = config(ECHO_UDP, 4, 1, 64);
    echo_loadgen_result res;
    echo_loadgen *lg = NULL;
    running r;
    int port;

    start(&r, ECHO_UDP, "127.0.0.1");
    port = r.port;
    stop(&r);
    CHECK_EQ(echo_loadgen_new(&cfg, &lg), 0);
    CHECK_EQ(echo_loadgen_connect(lg, "127.0.0.1", port, &res), -ECONNREFUSED);
    CHECK_EQ(res.error_kind, ECHO_LOADGEN_CONNECT);
    CHECK_EQ(echo_loadgen_run(lg, 10, &res), -ENOTCONN); /* usage: not connected */
    CHECK_EQ(res.error_kind, ECHO_LOADGEN_USAGE);
    echo_loadgen_free(lg);
}

int main(void)
{
    RUN(test_abi);
    RUN(test_bad_config);
    RUN(test_correct_server);
    RUN(test_udp_drops_and_duplicates);
    RUN(test_udp_refused);
    return check_summary("test_loadgen");
}
