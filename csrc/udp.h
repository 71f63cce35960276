/*
 * udp.h - RFC 862 over UDP: the server's datagram path. server.c owns the
 * socket and the loop; this file decides, datagram by datagram, what is
 * echoed (the loop guard, the rate limits) and echoes it in batches.
 */
#ifndef PYECHO_UDP_H
#define PYECHO_UDP_H

#include <stdint.h>

#include "net.h"
#include "pyecho.h"
#include "stats.h"

typedef struct udp_echo udp_echo;

/* Told about drops: at most once per reason per second, with how many were
 * dropped since the last time and the latest one's source. */
typedef void (*udp_drop_fn)(void *ctx, int reason, const net_addr *src, uint64_t count);

int udp_echo_new(const echo_config *cfg, counters *stats, udp_drop_fn on_drop,
                 void *ctx, udp_echo **out);
/* After the socket is bound: its own port and address, and ask the system
 * for each datagram's destination. 0 or a negative errno. */
int udp_echo_bind(udp_echo *u, int fd);
void udp_echo_free(udp_echo *u);
/* Echo what is waiting on fd, a few batches at most. now_ms: ev_now(). */
void udp_echo_readable(udp_echo *u, int fd, uint64_t now_ms);
/* Faults from now on (NULL: none; the caller keeps f alive until the next
 * call): reseeds the generator, sends what is now due. */
void udp_echo_set_faults(udp_echo *u, const echo_faults *f, int fd, uint64_t now_ms);
/* When the first datagram held by latency is due; UINT64_MAX: none. */
uint64_t udp_echo_due(const udp_echo *u);
/* Send the held datagrams that are due; returns udp_echo_due(). */
uint64_t udp_echo_release(udp_echo *u, int fd, uint64_t now_ms);
/* The server stopped: the datagrams held by latency are dropped (counted,
 * reason ECHO_DROP_SHUTDOWN). */
void udp_echo_discard(udp_echo *u, uint64_t now_ms);
/* Would a datagram from this source be refused by the guard? */
int udp_guarded(const net_addr *src);
/* Was this datagram sent to a broadcast or multicast address? */
int udp_to_group(const net_pktinfo *dst);

#endif
