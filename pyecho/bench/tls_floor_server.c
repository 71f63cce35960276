/*
 * tls_floor_server.c - the TLS benchmark's floor: a minimal single-threaded
 * epoll TLS echo server over OpenSSL, what echoing over TLS costs with
 * nothing but the kernel's and OpenSSL's work in it.
 *
 * Honest, not handicapped: level-triggered epoll, non-blocking sockets with
 * SSL_set_fd (OpenSSL reads and writes the socket itself, no copies through
 * memory BIOs), one SSL_read() of up to 64 KiB after another while records
 * are there, each echoed at once with SSL_write(); what a full socket does
 * not take is kept and written on EPOLLOUT before the connection is read
 * again. TCP_NODELAY. The same context settings as pyecho's (csrc/tls.c).
 *
 * pyecho.bench.tls compiles it at run time: cc -O2 ... -lssl -lcrypto.
 * Usage: tls_floor_server CERTFILE KEYFILE [PORT]; prints "PORT <n>" once
 * listening on 127.0.0.1 and serves until killed (it dies with its parent).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256

typedef struct conn {
    int fd;
    SSL *ssl;
    int ready;
    uint8_t *pending; /* echo SSL_write() has not taken yet */
    size_t pending_len;
} conn;

static uint8_t buf[BUF_SIZE];

static void conn_free(int ep, conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    SSL_free(c->ssl);
    free(c->pending);
    free(c);
    ERR_clear_error();
}

static void watch(int ep, conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};

    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what is pending; 1 if all went, 0 if the socket is full, -1 on error. */
static int flush(conn *c)
{
    while (c->pending_len > 0) {
        size_t n = 0;

        if (SSL_write_ex(c->ssl, c->pending, c->pending_len, &n) != 1) {
            int e = SSL_get_error(c->ssl, 0);

            return e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? 0 : -1;
        }
        memmove(c->pending, c->pending + n, c->pending_len - n);
        c->pending_len -= n;
    }
    return 1;
}

static void on_conn(int ep, conn *c, uint32_t events)
{
    if (c->pending_len > 0) {
        int rc = flush(c);

        if (rc < 0) {
            conn_free(ep, c);
            return;
        }
        if (rc == 0)
            return;
        watch(ep, c, EPOLLIN);
    }
    (void)events;
    if (!c->ready) {
        int rc = SSL_do_handshake(c->ssl);

        if (rc != 1) {
            if (SSL_get_error(c->ssl, rc) != SSL_ERROR_WANT_READ)
                conn_free(ep, c);
            return;
        }
        c->ready = 1;
    }
    for (;;) {
        size_t n = 0, w = 0;

        if (SSL_read_ex(c->ssl, buf, sizeof buf, &n) != 1) {
            int e = SSL_get_error(c->ssl, 0);

            if (e != SSL_ERROR_WANT_READ)
                conn_free(ep, c);
            return;
        }
        if (SSL_write_ex(c->ssl, buf, n, &w) != 1) {
            int e = SSL_get_error(c->ssl, 0);

            if (e != SSL_ERROR_WANT_WRITE) {
                conn_free(ep, c);
                return;
            }
            /* Retried with the same bytes (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER). */
            c->pending = malloc(n);
            if (c->pending == NULL) {
                conn_free(ep, c);
                return;
            }
            memcpy(c->pending, buf, n);
            c->pending_len = n;
            watch(ep, c, EPOLLOUT);
            return;
        }
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof addr;
    struct epoll_event events[MAX_EVENTS], ev;
    SSL_CTX *ctx;
    int lfd, ep, one = 1;

    if (argc < 3) {
        fprintf(stderr, "usage: tls_floor_server CERTFILE KEYFILE [PORT]\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_options(ctx, SSL_OP_ALL | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, argv[1]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(argc > 3 ? (uint16_t)atoi(argv[3]) : 0);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 1024) != 0) {
        perror("listen");
        return 1;
    }
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    printf("PORT %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    ep = epoll_create1(0);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);

        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {
                int fd;

                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    conn *c = calloc(1, sizeof *c);

                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c->fd = fd;
                    c->ssl = SSL_new(ctx);
                    SSL_set_fd(c->ssl, fd);
                    SSL_set_accept_state(c->ssl);
                    ev.events = EPOLLIN;
                    ev.data.ptr = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            on_conn(ep, events[i].data.ptr, events[i].events);
        }
    }
}
