/*
 * net.h - small socket helpers shared by the server, the client and the load
 * generator. Every function returns 0 or a negative errno.
 */
#ifndef PYECHO_NET_H
#define PYECHO_NET_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Big enough for any peer we accept: IPv4 or IPv6. */
typedef union net_addr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} net_addr;

/* Longest numeric host net_format() writes, with its NUL: an IPv6 address
 * (INET6_ADDRSTRLEN), "%" and an interface name or index (IF_NAMESIZE). */
#define NET_HOSTLEN 64

/* Resolve a numeric host and port (no DNS: Python resolves names); an IPv6
 * host may carry a scope ("fe80::1%eth0", "fe80::1%2"). */
int net_resolve(const char *host, int port, net_addr *addr, socklen_t *len);
/*
 * A non-blocking bound socket of type SOCK_STREAM (listening, with
 * SO_REUSEADDR as the original had) or SOCK_DGRAM. An IPv6 socket also
 * serves IPv4 (IPV6_V6ONLY off where the system allows it), so "::" is every
 * address of both families.
 */
int net_listen(const char *host, int port, int type, int backlog, int *fd);
/* Connect with a timeout (< 0: none); the socket is left non-blocking. */
int net_connect(const char *host, int port, int type, int timeout_ms, int *fd);
/* The length of addr's sockaddr for its family. */
socklen_t net_addr_len(const net_addr *addr);
/*
 * Numeric host and port of addr; host gets at most hostlen bytes. An IPv6
 * address with a scope keeps it: "fe80::1%eth0" (NET_HOSTLEN bytes hold any).
 */
int net_format(const net_addr *addr, char *host, size_t hostlen, int *port);
/*
 * poll() one fd for events: the events that occurred (> 0), -ETIMEDOUT when
 * time runs out, -EINTR when a signal arrives, so the caller can let Python
 * run its handlers.
 */
int net_wait(int fd, short events, int timeout_ms);
/* Milliseconds on the monotonic clock. */
uint64_t net_now_ms(void);

/*
 * Where a datagram was sent (its destination address), as the system says it
 * with recvmsg() ancillary data: IP_PKTINFO and IPV6_PKTINFO on Linux,
 * IP_RECVDSTADDR on the BSDs and macOS. Passed back on sendmsg(), it makes an
 * answer leave from the address that was asked.
 */
typedef struct net_pktinfo {
    uint8_t known;      /* 0: the system did not say (the fields are 0) */
    uint8_t v4;         /* IPv4 (also on an IPv6 socket): addr[0..3] */
    uint8_t group;      /* the system says it went to a broadcast or multicast
                           address (Linux: the local address that would
                           answer differs; BSD: MSG_BCAST, MSG_MCAST) */
    uint8_t addr[16];   /* the destination: IPv4 in the first 4 bytes */
    uint32_t ifindex;   /* the interface it came in on (0: unknown) */
} net_pktinfo;

/* Room for the control data net_pktinfo_read() takes and
 * net_pktinfo_write() writes (both families at once, aligned). */
#define NET_PKTINFO_SPACE 128

/* Ask the system to tell each datagram's destination on this bound UDP
 * socket of this family (an IPv6 one also for its IPv4 datagrams). 0, or a
 * negative errno where the system cannot (answers then leave from the
 * address the system picks). */
int net_want_pktinfo(int fd, int family);
/* The destination of a datagram received with recvmsg()/recvmmsg(). */
void net_pktinfo_read(const struct msghdr *m, net_pktinfo *out);
/* The control data making a datagram sent on a socket of this family leave
 * from p's address: its length (msg_controllen) in buf (cap bytes, at least
 * NET_PKTINFO_SPACE), 0 if none can be written. */
size_t net_pktinfo_write(const net_pktinfo *p, int family, void *buf, size_t cap);
/* Is this IPv4 address (4 bytes, network order) a broadcast address here?
 * Connecting a UDP socket to one without SO_BROADCAST fails with EACCES. */
int net_is_broadcast(const uint8_t addr[4]);

#endif
