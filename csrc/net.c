/*
 * net.c - socket helpers: resolve, listen, connect, format, wait.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "compat.h"
#include "net.h"

int net_resolve(const char *host, int port, net_addr *addr, socklen_t *len)
{
    struct addrinfo hints, *res = NULL;
    char service[8];
    int rc;

    if (host == NULL || port < 0 || port > 65535)
        return -EINVAL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    snprintf(service, sizeof service, "%d", port);
    rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0)
        return rc == EAI_SYSTEM ? -errno : -EINVAL;
    if (res->ai_addrlen > sizeof *addr) {
        freeaddrinfo(res);
        return -EAFNOSUPPORT;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int close_with(int fd, int rc)
{
    close(fd);
    return rc;
}

int net_listen(const char *host, int port, int type, int backlog, int *fd_out)
{
    net_addr addr;
    socklen_t len;
    int fd, one = 1;
    int rc = net_resolve(host, port, &addr, &len);

    if (rc != 0)
        return rc;
    fd = compat_socket(addr.sa.sa_family, type, 0);
    if (fd < 0)
        return -errno;
    /* Restarting right after a stop must not fail on TIME_WAIT sockets. */
    if (type == SOCK_STREAM &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        return close_with(fd, -errno);
    /* Dual stack whatever the system default: "::" serves IPv4 as well
     * (where the system allows it: compat.h). */
    if (addr.sa.sa_family == AF_INET6)
        compat_v6only_off(fd);
    if (bind(fd, &addr.sa, len) != 0)
        return close_with(fd, -errno);
    if (type == SOCK_STREAM && listen(fd, backlog) != 0)
        return close_with(fd, -errno);
    *fd_out = fd;
    return 0;
}

socklen_t net_addr_len(const net_addr *addr)
{
    return addr->sa.sa_family == AF_INET6 ? sizeof addr->in6 : sizeof addr->in4;
}

int net_connect(const char *host, int port, int type, int timeout_ms, int *fd_out)
{
    net_addr addr;
    socklen_t len;
    int fd, err = 0, one = 1;
    socklen_t errlen = sizeof err;
    int rc = net_resolve(host, port, &addr, &len);

    if (rc != 0)
        return rc;
    fd = compat_socket(addr.sa.sa_family, type, 0);
    if (fd < 0)
        return -errno;
    /* Echo traffic is request/response: do not wait to coalesce. */
    if (type == SOCK_STREAM)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* An IPv4-mapped address (::ffff:127.0.0.1) works whatever the default
     * (where the system allows it: compat.h). */
    if (addr.sa.sa_family == AF_INET6)
        compat_v6only_off(fd);
    if (connect(fd, &addr.sa, len) != 0) {
        if (errno != EINPROGRESS)
            return close_with(fd, -errno);
        rc = net_wait(fd, POLLOUT, timeout_ms);
        if (rc < 0)
            return close_with(fd, rc);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0)
            return close_with(fd, -errno);
        if (err != 0)
            return close_with(fd, -err);
    }
    *fd_out = fd;
    return 0;
}

int net_format(const net_addr *addr, char *host, size_t hostlen, int *port)
{
    int rc;

    if (addr->sa.sa_family == AF_INET)
        *port = ntohs(addr->in4.sin_port);
    else if (addr->sa.sa_family == AF_INET6)
        *port = ntohs(addr->in6.sin6_port);
    else
        return -EAFNOSUPPORT;
    /*
     * getnameinfo() rather than inet_ntop(): it keeps an IPv6 scope
     * ("fe80::1%eth0"), so the address can be connected to again, and it is
     * what the Python engine calls (pyecho/_config.py numeric_host()).
     */
    rc = getnameinfo(&addr->sa, net_addr_len(addr), host, (socklen_t)hostlen, NULL, 0,
                     NI_NUMERICHOST);
    if (rc != 0)
        return rc == EAI_SYSTEM ? -errno : rc == EAI_OVERFLOW ? -ENOSPC : -EINVAL;
    return 0;
}

int net_wait(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);

    if (n > 0)
        return p.revents;
    return n == 0 ? -ETIMEDOUT : -errno;
}

uint64_t net_now_ms(void)
{
    return compat_now_ms();
}
