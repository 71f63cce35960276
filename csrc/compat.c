/*
 * compat.c - see compat.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>
#ifdef PYECHO_HAVE_EVENTFD
#include <sys/eventfd.h>
#endif

#ifdef PYECHO_HAVE_GETENTROPY
#include <sys/random.h>
#endif

#include "compat.h"

/* ---- sockets ----------------------------------------------------------------- */

/* The flags socket() and accept4() set at once elsewhere, and no SIGPIPE.
 * -1 and errno (the fd closed) if one cannot be set. */
static int finish(int fd, int set_flags)
{
#ifdef SO_NOSIGPIPE
    int one = 1;
#endif

    if (fd < 0)
        return fd;
    if (set_flags) {
        int fl = fcntl(fd, F_GETFL);

        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 ||
            fcntl(fd, F_SETFD, FD_CLOEXEC) != 0)
            goto fail;
    }
#ifdef SO_NOSIGPIPE
    if (setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one) != 0)
        goto fail;
#endif
    return fd;
fail: {
    int err = errno;

    close(fd);
    errno = err;
    return -1;
}
}

int compat_socket(int domain, int type, int protocol)
{
#ifdef PYECHO_HAVE_SOCK_FLAGS
    return finish(socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol), 0);
#else
    /* The fd exists without FD_CLOEXEC for a moment: a thread that forks
     * and execs right then passes it on (POSIX offers nothing better). */
    return finish(socket(domain, type, protocol), 1);
#endif
}

int compat_accept(int fd, struct sockaddr *addr, socklen_t *len)
{
#ifdef PYECHO_HAVE_ACCEPT4
    return finish(accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC), 0);
#else
    /* The BSDs pass the listener's O_NONBLOCK on, Linux does not: set it. */
    return finish(accept(fd, addr, len), 1);
#endif
}

void compat_v6only_off(int fd)
{
    int zero = 0;

    (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
}

/* ---- several datagrams in one call ---------------------------------------------- */

int compat_recvmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags,
                    struct timespec *timeout)
{
#ifdef PYECHO_HAVE_RECVMMSG
    return (int)recvmmsg(fd, msgs, n, flags, timeout);
#else
    unsigned int i;

    if (timeout != NULL || n > INT32_MAX) {
        errno = EINVAL;
        return -1;
    }
    for (i = 0; i < n; i++) {
        ssize_t got = recvmsg(fd, &msgs[i].msg_hdr, flags);

        if (got < 0) {
            /* As recvmmsg(): an error after the first message is left for
             * the next call to report. */
            if (i > 0 && errno != EINTR)
                break;
            return i > 0 ? (int)i : -1;
        }
        msgs[i].msg_len = (unsigned int)got;
        flags |= MSG_DONTWAIT; /* MSG_WAITFORONE */
    }
    return (int)i;
#endif
}

int compat_sendmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags)
{
#ifdef PYECHO_HAVE_SENDMMSG
    return (int)sendmmsg(fd, msgs, n, flags);
#else
    unsigned int i;

    if (n > INT32_MAX) {
        errno = EINVAL;
        return -1;
    }
    for (i = 0; i < n; i++) {
        ssize_t sent = sendmsg(fd, &msgs[i].msg_hdr, flags);

        if (sent < 0)
            return i > 0 ? (int)i : -1;
        msgs[i].msg_len = (unsigned int)sent;
    }
    return (int)i;
#endif
}

ssize_t compat_recv_dgram(int fd, void *buf, size_t cap, int flags, size_t *len)
{
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &msg, flags);

    if (n < 0)
        return n;
    *len = (size_t)n;
    if ((msg.msg_flags & MSG_TRUNC) && *len <= cap)
        *len = cap + 1;
    return n;
}

/* ---- randomness --------------------------------------------------------------------- */

int compat_random(void *buf, size_t len)
{
#ifdef PYECHO_HAVE_GETENTROPY
    if (getentropy(buf, len) == 0)
        return 0;
#endif
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t got;

    if (fd < 0)
        return -errno;
    got = read(fd, buf, len);
    close(fd);
    return got == (ssize_t)len ? 0 : -EIO;
}

/* ---- time --------------------------------------------------------------------------- */

uint64_t compat_now_ms(void)
{
    struct timespec ts;

#ifdef CLOCK_UPTIME_RAW
    clock_gettime(CLOCK_UPTIME_RAW, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- waking a poller ------------------------------------------------------------------ */

int compat_wakeup_open(compat_wakeup *w)
{
#ifdef PYECHO_HAVE_EVENTFD
    w->rd = w->wr = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return w->rd < 0 ? -errno : 0;
#else
    int fds[2];

#ifdef PYECHO_HAVE_PIPE2
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
        return -errno;
#else
    if (pipe(fds) != 0)
        return -errno;
    for (int i = 0; i < 2; i++) {
        int fl = fcntl(fds[i], F_GETFL);

        if (fl < 0 || fcntl(fds[i], F_SETFL, fl | O_NONBLOCK) != 0 ||
            fcntl(fds[i], F_SETFD, FD_CLOEXEC) != 0) {
            int rc = -errno;

            close(fds[0]);
            close(fds[1]);
            return rc;
        }
    }
#endif
    w->rd = fds[0];
    w->wr = fds[1];
    return 0;
#endif
}

int compat_wakeup_signal(const compat_wakeup *w)
{
#ifdef PYECHO_HAVE_EVENTFD
    uint64_t one = 1;
#else
    uint8_t one = 1;
#endif

    /* write() is async-signal-safe; a full counter or pipe is a wake-up
     * already pending. */
    if (write(w->wr, &one, sizeof one) < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        return -errno;
    return 0;
}

/* Drained every time it is readable: a wake-up that lands after the one it
 * was meant for costs one spurious turn, never a loop that spins. */
void compat_wakeup_drain(const compat_wakeup *w)
{
    uint64_t buf[8];

    while (read(w->rd, buf, sizeof buf) > 0)
        ;
}

void compat_wakeup_close(compat_wakeup *w)
{
    if (w->rd >= 0)
        close(w->rd);
    if (w->wr >= 0 && w->wr != w->rd)
        close(w->wr);
    w->rd = w->wr = -1;
}
