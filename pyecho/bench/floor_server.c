/*
 * floor_server.c - the benchmark's floor: a minimal single-threaded epoll
 * echo server, what echoing costs with nothing but the kernel's work in it.
 *
 * It is meant to be honest, not handicapped: level-triggered epoll, one
 * recv() of up to 64 KiB per readiness event and an immediate send() of what
 * came, TCP_NODELAY, as pyecho's own server does. It is also correct: what a
 * full socket does not take is kept and sent on EPOLLOUT before the
 * connection is read again, so the load generator's byte check passes.
 *
 * pyecho.bench compiles it at run time with `cc -O2`. Usage:
 *     floor_server [HOST [PORT [BACKLOG]]]   (defaults 127.0.0.1 0 1024)
 * HOST is a numeric IPv4 or IPv6 address.
 * It prints "PORT <n>" on stdout once listening and serves until killed
 * (on Linux it also dies with its parent).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256

/* Bytes a full socket did not take, per fd; allocated only when needed. */
typedef struct pending {
    size_t off, len;
    char data[];
} pending;

static pending **pend;
static size_t pend_cap;

static void drop(int ep, int fd)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if ((size_t)fd < pend_cap) {
        free(pend[fd]);
        pend[fd] = NULL;
    }
}

static int watch(int ep, int op, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};

    return epoll_ctl(ep, op, fd, &ev);
}

static int keep(int fd, const char *data, size_t len)
{
    pending *p;

    if ((size_t)fd >= pend_cap) {
        size_t cap = pend_cap ? pend_cap : 1024;
        pending **grown;

        while (cap <= (size_t)fd)
            cap *= 2;
        grown = realloc(pend, cap * sizeof *pend);
        if (grown == NULL)
            return -1;
        memset(grown + pend_cap, 0, (cap - pend_cap) * sizeof *pend);
        pend = grown;
        pend_cap = cap;
    }
    p = malloc(sizeof *p + len);
    if (p == NULL)
        return -1;
    p->off = 0;
    p->len = len;
    memcpy(p->data, data, len);
    pend[fd] = p;
    return 0;
}

static void on_writable(int ep, int fd)
{
    pending *p = (size_t)fd < pend_cap ? pend[fd] : NULL;
    ssize_t n;

    if (p == NULL)
        return;
    n = send(fd, p->data + p->off, p->len - p->off, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            drop(ep, fd);
        return;
    }
    p->off += (size_t)n;
    if (p->off == p->len) {
        free(p);
        pend[fd] = NULL;
        if (watch(ep, EPOLL_CTL_MOD, fd, EPOLLIN) != 0)
            drop(ep, fd);
    }
}

static void on_readable(int ep, int fd, char *buf)
{
    ssize_t n = recv(fd, buf, BUF_SIZE, 0);
    ssize_t sent;

    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            drop(ep, fd);
        return;
    }
    sent = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            drop(ep, fd);
            return;
        }
        sent = 0;
    }
    if (sent < n) {
        if (keep(fd, buf + sent, (size_t)(n - sent)) != 0 ||
            watch(ep, EPOLL_CTL_MOD, fd, EPOLLOUT) != 0)
            drop(ep, fd);
    }
}

static void on_acceptable(int ep, int lfd)
{
    for (;;) {
        int one = 1;
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0)
            return; /* EAGAIN, or out of descriptors: retried on the next event */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (watch(ep, EPOLL_CTL_ADD, fd, EPOLLIN) != 0)
            close(fd);
    }
}

/* A listening socket on a numeric IPv4 or IPv6 address ("::" also serves
 * IPv4, as pyecho's servers do); -1 with a message on failure. */
static int listen_on(const char *host, const char *port, int backlog)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai;
    int one = 1, zero = 0, fd;

    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        fprintf(stderr, "floor_server: not a numeric address and port: %s %s\n", host, port);
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
        perror("floor_server");
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    return fd;
}

int main(int argc, char **argv)
{
    int backlog = argc > 3 ? atoi(argv[3]) : 1024;
    static struct epoll_event events[MAX_EVENTS];
    static char buf[BUF_SIZE];
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    struct rlimit rl;
    int lfd, ep, port;

#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* elsewhere: pyecho.bench says no floor */
#endif
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    lfd = listen_on(argc > 1 ? argv[1] : "127.0.0.1", argc > 2 ? argv[2] : "0", backlog);
    if (lfd < 0)
        return 1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0 || getsockname(lfd, (struct sockaddr *)&addr, &len) != 0 ||
        watch(ep, EPOLL_CTL_ADD, lfd, EPOLLIN) != 0) {
        perror("floor_server");
        return 1;
    }
    port = addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                      : ((struct sockaddr_in *)&addr)->sin_port;
    printf("PORT %d\n", ntohs((uint16_t)port));
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("floor_server: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;

            if (fd == lfd)
                on_acceptable(ep, lfd);
            else if ((size_t)fd < pend_cap && pend[fd] != NULL)
                on_writable(ep, fd); /* not read again until drained */
            else
                on_readable(ep, fd, buf);
        }
    }
}
