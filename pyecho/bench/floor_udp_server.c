/*
 * floor_udp_server.c - the benchmark's UDP floor: the least a UDP echo
 * server can do, so what it costs is the kernel's work.
 *
 * One blocking socket; recvmmsg() waits for the first datagram and takes
 * up to 32 that are already there (MSG_WAITFORONE), then one sendmmsg()
 * sends each back to its sender. No event loop, no checks: two system calls
 * per batch. (pyecho's native engine does the same batches from an epoll
 * loop, with its guard and rate limits on top.)
 *
 * pyecho.bench compiles it at run time with `cc -O2`. Usage:
 *     floor_udp_server [HOST [PORT]]   (defaults 127.0.0.1 0)
 * It prints "PORT <n>" on stdout once bound and serves until killed (it also
 * dies with its parent).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 32
#define DGRAM_MAX 65536

static int bind_to(const char *host, const char *port)
{
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai;
    int fd, zero = 0;

    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        fprintf(stderr, "floor_udp_server: not a numeric address: %s\n", host);
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && ai->ai_family == AF_INET6) /* "::" serves IPv4 too, as pyecho */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        perror("floor_udp_server");
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    return fd;
}

int main(int argc, char **argv)
{
    static char bufs[BATCH][DGRAM_MAX];
    static struct sockaddr_storage from[BATCH];
    static struct iovec iov[BATCH];
    static struct mmsghdr in[BATCH], out[BATCH];
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    int fd, port;

#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* elsewhere: pyecho.bench says no floor */
#endif
    fd = bind_to(argc > 1 ? argv[1] : "127.0.0.1", argc > 2 ? argv[2] : "0");
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&addr, &len) != 0)
        return 1;
    port = addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                      : ((struct sockaddr_in *)&addr)->sin_port;
    printf("PORT %d\n", ntohs((uint16_t)port));
    fflush(stdout);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        in[i].msg_hdr.msg_iov = &iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &from[i];
    }
    for (;;) {
        int n, sent = 0;

        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_len = DGRAM_MAX;
            in[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("floor_udp_server: recvmmsg");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            out[i].msg_hdr = in[i].msg_hdr;
            iov[i].iov_len = in[i].msg_len; /* the echo: what came */
        }
        while (sent < n) {
            int m = sendmmsg(fd, out + sent, (unsigned)(n - sent), 0);

            if (m < 0 && errno == EINTR)
                continue;
            sent += m > 0 ? m : 1; /* one that cannot be sent is dropped */
        }
    }
}
