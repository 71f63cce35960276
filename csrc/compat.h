/*
 * compat.h - the few calls that differ between Linux, macOS and the BSDs.
 *
 * Everything Linux-only the core uses goes through here, chosen by what the
 * system has, never by its name: CMakeLists.txt probes each function
 * (check_symbol_exists) and defines PYECHO_HAVE_<NAME> for those it finds;
 * macros the system headers define (MSG_NOSIGNAL, SO_NOSIGPIPE,
 * CLOCK_UPTIME_RAW) are tested with #ifdef. Without a PYECHO_HAVE_ the POSIX
 * path is taken, so -DPYECHO_PORTABLE=ON (no probes) builds on Linux the
 * code that macOS runs.
 *
 *   PYECHO_HAVE_SOCK_FLAGS   socket(type | SOCK_NONBLOCK | SOCK_CLOEXEC)
 *   PYECHO_HAVE_ACCEPT4      accept4()
 *   PYECHO_HAVE_RECVMMSG     recvmmsg()
 *   PYECHO_HAVE_SENDMMSG     sendmmsg()
 *   PYECHO_HAVE_MMSGHDR      struct mmsghdr in <sys/socket.h>
 *   PYECHO_HAVE_EVENTFD      eventfd()
 *   PYECHO_HAVE_PIPE2        pipe2()
 *   PYECHO_HAVE_GETENTROPY   getentropy()
 *
 * The socket functions return what the call they replace returns (-1 and
 * errno), so the callers keep their error handling.
 */
#ifndef PYECHO_COMPAT_H
#define PYECHO_COMPAT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

/* ---- sockets ----------------------------------------------------------------- */

/* No SIGPIPE from a send to a closed peer: the flag where send() takes one
 * (Linux, FreeBSD, recent macOS), and SO_NOSIGPIPE on every socket the core
 * makes or accepts where the system has that (macOS, the BSDs). */
#ifdef MSG_NOSIGNAL
#define COMPAT_MSG_NOSIGNAL MSG_NOSIGNAL
#else
#define COMPAT_MSG_NOSIGNAL 0
#endif

/* socket() of a non-blocking, close-on-exec socket (and SO_NOSIGPIPE). */
int compat_socket(int domain, int type, int protocol);
/* accept() of a non-blocking, close-on-exec socket (and SO_NOSIGPIPE). */
int compat_accept(int fd, struct sockaddr *addr, socklen_t *len);
/*
 * IPV6_V6ONLY off, best effort: an IPv6 socket then serves IPv4-mapped
 * addresses too. Systems that refuse it (OpenBSD) keep IPv6 only; nothing
 * else changes, so this never fails.
 */
void compat_v6only_off(int fd);

/* ---- several datagrams in one call ---------------------------------------------- */

#ifndef PYECHO_HAVE_MMSGHDR
struct mmsghdr {
    struct msghdr msg_hdr; /* as for recvmsg()/sendmsg() */
    unsigned int msg_len;  /* bytes received or sent */
};
#endif

/*
 * recvmmsg() and sendmmsg() with Linux's signatures and results: how many
 * messages, or -1 and errno if the first one failed. Where the system lacks
 * them, one recvmsg()/sendmsg() per message: msg_control passes through
 * untouched (control data, IP_PKTINFO...), msg_flags comes back per message.
 * The fallback never blocks after the first message (MSG_WAITFORONE), and
 * `timeout` must be NULL.
 *
 * MSG_TRUNC as an input flag is Linux's alone (elsewhere msg_len would be
 * the bytes copied, not the datagram's length): do not pass it; a datagram
 * longer than its buffer has MSG_TRUNC in msg_hdr.msg_flags everywhere.
 */
int compat_recvmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags,
                    struct timespec *timeout);
int compat_sendmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags);

/*
 * recv() of one datagram into buf (at most cap bytes), returning what recv()
 * returns; *len is its length, or cap + 1 if it was longer than cap (read
 * from msg_flags, the same on every system: as an input flag MSG_TRUNC is
 * Linux's alone, and elsewhere a datagram longer than the buffer would look
 * exactly as long as the buffer).
 */
ssize_t compat_recv_dgram(int fd, void *buf, size_t cap, int flags, size_t *len);

/* ---- randomness --------------------------------------------------------------------- */

/* len (at most 256) random bytes for keys: getentropy() where the system has
 * it, else /dev/urandom. 0 or a negative errno. */
int compat_random(void *buf, size_t len);

/* ---- time --------------------------------------------------------------------------- */

/*
 * Milliseconds on a monotonic clock that, as Linux's CLOCK_MONOTONIC and
 * Python's time.monotonic(), stops while the system sleeps: macOS's
 * CLOCK_MONOTONIC counts sleep, its CLOCK_UPTIME_RAW does not.
 */
uint64_t compat_now_ms(void);

/* ---- waking a poller ------------------------------------------------------------------ */

/*
 * A wake-up channel for a poller that has no wake-up of its own: an eventfd
 * where the system has one (rd == wr), else a non-blocking self-pipe. The
 * poller watches rd for reading and drains it when readable.
 */
typedef struct compat_wakeup {
    int rd, wr;
} compat_wakeup;

/* 0 or a negative errno. */
int compat_wakeup_open(compat_wakeup *w);
/* From any thread or a signal handler (write() only): 0 or a negative
 * errno; a full channel counts as woken. */
int compat_wakeup_signal(const compat_wakeup *w);
void compat_wakeup_drain(const compat_wakeup *w);
void compat_wakeup_close(compat_wakeup *w);

#endif
