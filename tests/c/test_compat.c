/*
 * test_compat.c - unit tests of csrc/compat.c. CMake builds it twice: as
 * `compat`, with what this system has (accept4, recvmmsg, eventfd... on
 * Linux), and as `compat_posix`, with none of it: the fallbacks macOS and
 * the BSDs take (accept + fcntl, recvmsg/sendmsg loops, a self-pipe). Both
 * must behave the same.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "compat.h"

static int nonblocking_cloexec(int fd)
{
    return (fcntl(fd, F_GETFL) & O_NONBLOCK) && (fcntl(fd, F_GETFD) & FD_CLOEXEC);
}

static int readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

static void bind_loopback(int fd, struct sockaddr_in *addr)
{
    socklen_t len = sizeof *addr;

    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_EQ(bind(fd, (struct sockaddr *)addr, sizeof *addr), 0);
    CHECK_EQ(getsockname(fd, (struct sockaddr *)addr, &len), 0);
}

static void test_socket_and_accept_flags(void)
{
    struct sockaddr_in addr;
    int lfd = compat_socket(AF_INET, SOCK_STREAM, 0), cfd, afd = -1;

    CHECK(lfd >= 0);
    CHECK(nonblocking_cloexec(lfd));
    bind_loopback(lfd, &addr);
    CHECK_EQ(listen(lfd, 4), 0);
    /* Nothing waiting: EAGAIN, not a block. */
    CHECK_EQ(compat_accept(lfd, NULL, NULL), -1);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    cfd = compat_socket(AF_INET, SOCK_STREAM, 0);
    CHECK(cfd >= 0);
    CHECK(connect(cfd, (struct sockaddr *)&addr, sizeof addr) == 0 || errno == EINPROGRESS);
    for (int i = 0; i < 100 && afd < 0; i++) {
        readable(lfd, 10);
        afd = compat_accept(lfd, NULL, NULL);
    }
    CHECK(afd >= 0);
    CHECK(nonblocking_cloexec(afd));
    close(afd);
    close(cfd);
    close(lfd);
}

static void test_v6only_off_never_fails(void)
{
    int fd = compat_socket(AF_INET6, SOCK_STREAM, 0);

    if (fd < 0)
        return; /* no IPv6 here */
    compat_v6only_off(fd);
    compat_v6only_off(-1); /* best effort: not even a bad fd is an error */
    close(fd);
}

#define N 5

static void test_recvmmsg_and_sendmmsg(void)
{
    static uint8_t out_buf[N][100], in_buf[8][100];
    struct mmsghdr out[N], in[8];
    struct iovec out_iov[N], in_iov[8];
    struct sockaddr_in a_addr, b_addr;
    int a = compat_socket(AF_INET, SOCK_DGRAM, 0), b = compat_socket(AF_INET, SOCK_DGRAM, 0);
    int n;

    CHECK(a >= 0 && b >= 0);
    bind_loopback(a, &a_addr);
    bind_loopback(b, &b_addr);
    memset(out, 0, sizeof out);
    memset(in, 0, sizeof in);
    for (int i = 0; i < N; i++) {
        memset(out_buf[i], 'a' + i, sizeof out_buf[i]);
        out_iov[i].iov_base = out_buf[i];
        out_iov[i].iov_len = 10 + (size_t)i * 10; /* 10, 20 ... 50 bytes */
        out[i].msg_hdr.msg_name = &b_addr;
        out[i].msg_hdr.msg_namelen = sizeof b_addr;
        out[i].msg_hdr.msg_iov = &out_iov[i];
        out[i].msg_hdr.msg_iovlen = 1;
    }
    CHECK_EQ(compat_sendmmsg(a, out, N, MSG_DONTWAIT | COMPAT_MSG_NOSIGNAL), N);
    for (int i = 0; i < N; i++)
        CHECK_EQ(out[i].msg_len, out_iov[i].iov_len);
    for (int i = 0; i < 8; i++) {
        in_iov[i].iov_base = in_buf[i];
        /* The last datagram (50 bytes) gets a 40-byte buffer. */
        in_iov[i].iov_len = i == N - 1 ? 40 : sizeof in_buf[i];
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
    }
    CHECK(readable(b, 1000));
    /* All five, in order, though eight were asked for: no blocking. */
    n = 0;
    for (int tries = 0; tries < 100 && n < N; tries++) {
        int got = compat_recvmmsg(b, in + n, 8 - (unsigned)n, MSG_DONTWAIT, NULL);

        if (got > 0)
            n += got;
        else
            readable(b, 10);
    }
    CHECK_EQ(n, N);
    for (int i = 0; i < N; i++) {
        size_t want = i == N - 1 ? 40 : out_iov[i].iov_len;

        CHECK_EQ(in[i].msg_len, want);
        CHECK_EQ(in_buf[i][0], 'a' + i);
        /* Truncation is read from msg_flags, the same everywhere. */
        CHECK_EQ(!!(in[i].msg_hdr.msg_flags & MSG_TRUNC), i == N - 1);
    }
    CHECK_EQ(compat_recvmmsg(b, in, 8, MSG_DONTWAIT, NULL), -1);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    close(a);
    close(b);
}

static void test_recv_dgram_says_when_it_was_longer(void)
{
    struct sockaddr_in b_addr;
    int a = compat_socket(AF_INET, SOCK_DGRAM, 0), b = compat_socket(AF_INET, SOCK_DGRAM, 0);
    uint8_t buf[8];
    size_t len = 0;

    CHECK(a >= 0 && b >= 0);
    bind_loopback(b, &b_addr);
    CHECK_EQ(connect(a, (struct sockaddr *)&b_addr, sizeof b_addr), 0);
    /* Exactly the buffer's size: whole. One byte more: "longer", not 8. */
    CHECK_EQ(send(a, "12345678", 8, 0), 8);
    CHECK_EQ(send(a, "123456789", 9, 0), 9);
    CHECK_EQ(send(a, "", 0, 0), 0);
    CHECK(readable(b, 1000));
    CHECK_EQ(compat_recv_dgram(b, buf, sizeof buf, 0, &len), 8);
    CHECK_EQ(len, 8);
    CHECK_EQ(compat_recv_dgram(b, buf, sizeof buf, 0, &len), 8);
    CHECK_EQ(len, 9);
    CHECK_EQ(compat_recv_dgram(b, buf, sizeof buf, 0, &len), 0);
    CHECK_EQ(len, 0);
    CHECK_EQ(compat_recv_dgram(b, buf, sizeof buf, MSG_DONTWAIT, &len), -1);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    close(a);
    close(b);
}

static void test_wakeup(void)
{
    compat_wakeup w;

    CHECK_EQ(compat_wakeup_open(&w), 0);
    CHECK(nonblocking_cloexec(w.rd) && nonblocking_cloexec(w.wr));
    CHECK(!readable(w.rd, 0));
    /* More signals than a pipe holds: still one pending wake-up, no error. */
    for (int i = 0; i < 100000; i++)
        CHECK_EQ(compat_wakeup_signal(&w), 0);
    CHECK(readable(w.rd, 0));
    compat_wakeup_drain(&w);
    CHECK(!readable(w.rd, 0));
    compat_wakeup_close(&w);
    CHECK_EQ(w.rd, -1);
}

static void test_clock(void)
{
    uint64_t t0 = compat_now_ms(), t1;
    struct timespec ms20 = {0, 20 * 1000000L};

    nanosleep(&ms20, NULL);
    t1 = compat_now_ms();
    CHECK(t1 >= t0 + 19 && t1 < t0 + 2000);
}

int main(void)
{
#ifdef PYECHO_HAVE_RECVMMSG
    fprintf(stderr, "compat: with this system's calls\n");
#else
    fprintf(stderr, "compat: the POSIX fallbacks\n");
#endif
    RUN(test_socket_and_accept_flags);
    RUN(test_v6only_off_never_fails);
    RUN(test_recvmmsg_and_sendmmsg);
    RUN(test_recv_dgram_says_when_it_was_longer);
    RUN(test_wakeup);
    RUN(test_clock);
    return check_summary("test_compat");
}
