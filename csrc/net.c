/*
 * net.c - socket helpers: resolve, listen, connect, format, wait.
 */
#define _GNU_SOURCE
/* macOS declares IPV6_PKTINFO and struct in6_pktinfo (RFC 3542) only when asked. */
#define __APPLE_USE_RFC_3542
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

/* ---- destination addresses -------------------------------------------------- */

int net_want_pktinfo(int fd, int family)
{
    int one = 1, rc = 0;

#if defined(IP_PKTINFO)
    /* On an IPv6 socket too: its IPv4 datagrams then carry in_pktinfo, whose
     * ipi_spec_dst tells a subnet broadcast from a unicast address. */
    if (setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one) != 0 && family == AF_INET)
        rc = -errno;
#elif defined(IP_RECVDSTADDR)
    if (setsockopt(fd, IPPROTO_IP, IP_RECVDSTADDR, &one, sizeof one) != 0 && family == AF_INET)
        rc = -errno;
#else
    if (family == AF_INET)
        rc = -ENOPROTOOPT;
#endif
    if (family == AF_INET6) {
#if defined(IPV6_RECVPKTINFO)
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one) != 0)
            rc = -errno;
#else
        rc = -ENOPROTOOPT;
#endif
    }
    return rc;
}

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

void net_pktinfo_read(const struct msghdr *m, net_pktinfo *out)
{
    int have_v4 = 0;

    memset(out, 0, sizeof *out);
#if defined(MSG_BCAST) && defined(MSG_MCAST)
    if (m->msg_flags & (MSG_BCAST | MSG_MCAST))
        out->group = 1;
#endif
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL;
         c = CMSG_NXTHDR((struct msghdr *)m, c)) {
#if defined(IP_PKTINFO)
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            struct in_pktinfo pi;

            memcpy(&pi, CMSG_DATA(c), sizeof pi);
            out->known = out->v4 = 1;
            have_v4 = 1;
            memcpy(out->addr, &pi.ipi_addr, 4);
            memset(out->addr + 4, 0, 12);
            out->ifindex = (uint32_t)pi.ipi_ifindex;
            /* Linux puts the header's destination in ipi_addr and, in
             * ipi_spec_dst, the local address that would answer: the same
             * for a datagram sent to one of ours, another one for a
             * broadcast or multicast. */
            if (memcmp(&pi.ipi_addr, &pi.ipi_spec_dst, 4) != 0)
                out->group = 1;
            continue;
        }
#elif defined(IP_RECVDSTADDR)
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVDSTADDR &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in_addr))) {
            out->known = out->v4 = 1;
            have_v4 = 1;
            memcpy(out->addr, CMSG_DATA(c), 4);
            memset(out->addr + 4, 0, 12);
            continue;
        }
#endif
#if defined(IPV6_PKTINFO)
        if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo)) && !have_v4) {
            struct in6_pktinfo pi;

            memcpy(&pi, CMSG_DATA(c), sizeof pi);
            out->known = 1;
            out->ifindex = pi.ipi6_ifindex;
            if (memcmp(pi.ipi6_addr.s6_addr, v4_mapped_prefix, 12) == 0) {
                out->v4 = 1;
                memcpy(out->addr, pi.ipi6_addr.s6_addr + 12, 4);
            } else {
                memcpy(out->addr, pi.ipi6_addr.s6_addr, 16);
            }
        }
#endif
    }
}

size_t net_pktinfo_write(const net_pktinfo *p, int family, void *buf, size_t cap)
{
    struct msghdr m;
    struct cmsghdr *c;

    if (!p->known || cap < NET_PKTINFO_SPACE)
        return 0;
    memset(buf, 0, cap);
    memset(&m, 0, sizeof m);
    m.msg_control = buf;
    m.msg_controllen = cap;
    c = CMSG_FIRSTHDR(&m);
    if (family == AF_INET6) {
#if defined(IPV6_PKTINFO)
        struct in6_pktinfo pi;

        memset(&pi, 0, sizeof pi);
        if (p->v4) {
            memcpy(pi.ipi6_addr.s6_addr, v4_mapped_prefix, 12);
            memcpy(pi.ipi6_addr.s6_addr + 12, p->addr, 4);
        } else {
            memcpy(pi.ipi6_addr.s6_addr, p->addr, 16);
            /* A link-local address is only that on its interface. */
            if (IN6_IS_ADDR_LINKLOCAL(&pi.ipi6_addr))
                pi.ipi6_ifindex = p->ifindex;
        }
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof pi);
        memcpy(CMSG_DATA(c), &pi, sizeof pi);
        return CMSG_SPACE(sizeof pi);
#else
        return 0;
#endif
    }
    if (!p->v4)
        return 0;
#if defined(IP_PKTINFO)
    {
        struct in_pktinfo pi;

        memset(&pi, 0, sizeof pi);
        memcpy(&pi.ipi_spec_dst, p->addr, 4); /* the source; any interface */
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof pi);
        memcpy(CMSG_DATA(c), &pi, sizeof pi);
        return CMSG_SPACE(sizeof pi);
    }
#elif defined(IP_SENDSRCADDR)
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_SENDSRCADDR;
    c->cmsg_len = CMSG_LEN(sizeof(struct in_addr));
    memcpy(CMSG_DATA(c), p->addr, 4);
    return CMSG_SPACE(sizeof(struct in_addr));
#else
    return 0;
#endif
}

int net_is_broadcast(const uint8_t addr[4])
{
    struct sockaddr_in sin;
    int fd = compat_socket(AF_INET, SOCK_DGRAM, 0), rc;

    if (fd < 0)
        return 0;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(9);
    memcpy(&sin.sin_addr, addr, 4);
    rc = connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0 && errno == EACCES;
    close(fd);
    return rc;
}
