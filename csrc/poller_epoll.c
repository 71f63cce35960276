/*
 * poller_epoll.c - poller.h over Linux epoll (level-triggered).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "poller.h"

#define BATCH 256 /* events taken from the kernel per wait */

struct poller {
    int epfd;
    struct epoll_event events[BATCH];
};

int poller_new(poller **out)
{
    poller *p = calloc(1, sizeof *p);

    if (p == NULL)
        return -ENOMEM;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        int rc = -errno;
        free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void poller_free(poller *p)
{
    if (p == NULL)
        return;
    close(p->epfd);
    free(p);
}

static int ctl(poller *p, int op, int fd, uint32_t mask, void *ptr)
{
    struct epoll_event ev = {
        .events = (mask & EV_READ ? EPOLLIN : 0u) | (mask & EV_WRITE ? EPOLLOUT : 0u),
        .data.ptr = ptr,
    };

    return epoll_ctl(p->epfd, op, fd, &ev) == 0 ? 0 : -errno;
}

int poller_add(poller *p, int fd, uint32_t mask, void *ptr)
{
    return ctl(p, EPOLL_CTL_ADD, fd, mask, ptr);
}

int poller_mod(poller *p, int fd, uint32_t mask, void *ptr)
{
    return ctl(p, EPOLL_CTL_MOD, fd, mask, ptr);
}

int poller_del(poller *p, int fd)
{
    /* Before close(): a fork()ed child holding the fd would keep it in the
     * set, and its events would point at freed memory. */
    return epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno;
}

int poller_wait(poller *p, poller_event *out, int max, int timeout_ms)
{
    int n = epoll_wait(p->epfd, p->events, max < BATCH ? max : BATCH, timeout_ms);

    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        uint32_t e = p->events[i].events;

        out[i].ptr = p->events[i].data.ptr;
        out[i].ready = (e & EPOLLIN ? EV_READ : 0u) | (e & EPOLLOUT ? EV_WRITE : 0u) |
                       (e & (EPOLLERR | EPOLLHUP) ? EV_ERROR : 0u);
    }
    return n;
}
