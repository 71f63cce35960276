/*
 * poller_epoll.c - poller.h over Linux epoll (level-triggered).
 *
 * An fd is in the epoll set only while its mask is not empty: epoll reports
 * EPOLLERR and EPOLLHUP for every fd it holds, asked for or not.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "compat.h"
#include "poller.h"

#define BATCH 256 /* events taken from the kernel per wait */

struct poller {
    int epfd;
    compat_wakeup wake; /* in the set, its event's ptr is &wake */
    struct epoll_event events[BATCH];
};

const char *poller_name(void)
{
    return "epoll";
}

static int ctl(poller *p, int op, int fd, uint32_t mask, void *ptr)
{
    struct epoll_event ev = {
        .events = (mask & EV_READ ? EPOLLIN : 0u) | (mask & EV_WRITE ? EPOLLOUT : 0u),
        .data.ptr = ptr,
    };

    return epoll_ctl(p->epfd, op, fd, &ev) == 0 ? 0 : -errno;
}

int poller_new(poller **out)
{
    poller *p = calloc(1, sizeof *p);
    int rc;

    if (p == NULL)
        return -ENOMEM;
    p->wake.rd = p->wake.wr = -1;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        rc = -errno;
        free(p);
        return rc;
    }
    rc = compat_wakeup_open(&p->wake);
    if (rc == 0)
        rc = ctl(p, EPOLL_CTL_ADD, p->wake.rd, EV_READ, &p->wake);
    if (rc != 0) {
        poller_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void poller_free(poller *p)
{
    if (p == NULL)
        return;
    compat_wakeup_close(&p->wake);
    close(p->epfd);
    free(p);
}

int poller_add(poller *p, int fd, uint32_t mask, void *ptr)
{
    return mask == 0 ? 0 : ctl(p, EPOLL_CTL_ADD, fd, mask, ptr);
}

int poller_mod(poller *p, int fd, uint32_t old, uint32_t mask, void *ptr)
{
    if (old == 0)
        return poller_add(p, fd, mask, ptr);
    if (mask == 0)
        return poller_del(p, fd, old);
    return ctl(p, EPOLL_CTL_MOD, fd, mask, ptr);
}

int poller_del(poller *p, int fd, uint32_t old)
{
    /* Before close(): a fork()ed child holding the fd would keep it in the
     * set, and its events would point at freed memory. */
    if (old == 0)
        return 0;
    return epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno;
}

int poller_wait(poller *p, poller_event *out, int max, int timeout_ms)
{
    int n = epoll_wait(p->epfd, p->events, max < BATCH ? max : BATCH, timeout_ms);
    int got = 0;

    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        uint32_t e = p->events[i].events;

        if (p->events[i].data.ptr == &p->wake) {
            compat_wakeup_drain(&p->wake);
            continue;
        }
        out[got].ptr = p->events[i].data.ptr;
        out[got++].ready = (e & EPOLLIN ? EV_READ : 0u) | (e & EPOLLOUT ? EV_WRITE : 0u) |
                           (e & (EPOLLERR | EPOLLHUP) ? EV_ERROR : 0u);
    }
    return got;
}

int poller_wake(poller *p)
{
    return compat_wakeup_signal(&p->wake);
}
