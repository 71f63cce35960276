/*
 * tls_client.c - the TLS benchmark's load: one thread per connection, each
 * a blocking OpenSSL client that verifies the server against CAFILE.
 *
 *   tls_client CAFILE PORT rt CONNECTIONS SIZE SECONDS
 *       each connection, established once, sends SIZE bytes and reads their
 *       echo back, again and again (a closed loop, one message in flight);
 *   tls_client CAFILE PORT hs CONNECTIONS SIZE SECONDS
 *       each thread opens a connection, handshakes, echoes SIZE bytes,
 *       sends close_notify and closes, again and again.
 *
 * Every echoed byte is checked. Prints "COUNT <round trips> NS <elapsed>"
 * (or "ERROR ..." with exit status 1). pyecho.bench.tls compiles it at run
 * time: cc -O2 ... -lssl -lcrypto -lpthread.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_CTX *ctx;
static int port;
static size_t size;
static atomic_int stop;
static atomic_int failed;
static atomic_ullong total;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static SSL *dial(int *fd_out)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    SSL *ssl;

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((uint16_t)port);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return NULL;
    }
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set1_host(ssl, "127.0.0.1");
    if (SSL_connect(ssl) != 1) {
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    *fd_out = fd;
    return ssl;
}

/* One message out and its echo back, checked; 0 or -1. */
static int round_trip(SSL *ssl, const uint8_t *msg, uint8_t *got)
{
    size_t n = 0, have = 0;

    if (SSL_write_ex(ssl, msg, size, &n) != 1 || n != size)
        return -1;
    while (have < size) {
        if (SSL_read_ex(ssl, got + have, size - have, &n) != 1)
            return -1;
        have += n;
    }
    return memcmp(msg, got, size) == 0 ? 0 : -1;
}

static void *run_rt(void *arg)
{
    uint8_t *msg = malloc(size), *got = malloc(size);
    unsigned long long count = 0;
    int fd = -1;
    SSL *ssl = dial(&fd);

    (void)arg;
    for (size_t i = 0; i < size; i++)
        msg[i] = (uint8_t)(i * 7 + 1);
    if (ssl == NULL)
        atomic_store(&failed, 1);
    while (ssl != NULL && !atomic_load(&stop)) {
        if (round_trip(ssl, msg, got) != 0) {
            atomic_store(&failed, 2);
            break;
        }
        count++;
    }
    if (ssl != NULL) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
        close(fd);
    }
    atomic_fetch_add(&total, count);
    free(msg);
    free(got);
    return NULL;
}

static void *run_hs(void *arg)
{
    uint8_t *msg = malloc(size), *got = malloc(size);
    unsigned long long count = 0;

    (void)arg;
    memset(msg, 'h', size);
    while (!atomic_load(&stop)) {
        int fd = -1;
        SSL *ssl = dial(&fd);

        if (ssl == NULL || round_trip(ssl, msg, got) != 0) {
            atomic_store(&failed, 3);
            if (ssl != NULL) {
                SSL_free(ssl);
                close(fd);
            }
            break;
        }
        SSL_shutdown(ssl);
        SSL_free(ssl);
        close(fd);
        count++;
    }
    atomic_fetch_add(&total, count);
    free(msg);
    free(got);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t threads[1024];
    int conns;
    double seconds;
    uint64_t start, elapsed;
    int hs;

    if (argc != 7) {
        fprintf(stderr, "usage: tls_client CAFILE PORT rt|hs CONNECTIONS SIZE SECONDS\n");
        return 2;
    }
    port = atoi(argv[2]);
    hs = strcmp(argv[3], "hs") == 0;
    conns = atoi(argv[4]);
    size = (size_t)atol(argv[5]);
    seconds = atof(argv[6]);
    if (conns < 1 || conns > 1024 || size < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_load_verify_locations(ctx, argv[1], NULL) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    start = now_ns();
    for (int i = 0; i < conns; i++)
        pthread_create(&threads[i], NULL, hs ? run_hs : run_rt, NULL);
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&stop, 1);
    for (int i = 0; i < conns; i++)
        pthread_join(threads[i], NULL);
    elapsed = now_ns() - start;
    if (atomic_load(&failed)) {
        printf("ERROR %d\n", atomic_load(&failed));
        return 1;
    }
    printf("COUNT %llu NS %llu\n", (unsigned long long)atomic_load(&total),
           (unsigned long long)elapsed);
    SSL_CTX_free(ctx);
    return 0;
}
