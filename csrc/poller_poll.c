/*
 * poller_poll.c - poller.h over POSIX poll(): any POSIX system, and the
 * portable reference the other backends are checked against.
 *
 * The watched fds are a dense array of pollfd (slot 0: the wake-up), with
 * an fd -> slot index beside it; removing one moves the last into its
 * place. An fd with an empty mask keeps its slot with pollfd.fd = -1, which
 * poll() skips entirely: no events, no POLLERR or POLLHUP. Each wait costs
 * O(watched fds), the price of poll(); a wait that finds more ready fds
 * than it may report goes on next time from where it stopped, so none
 * waits behind the others.
 */
#define _GNU_SOURCE /* struct mmsghdr in compat.h, on glibc */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"
#include "poller.h"

struct poller {
    struct pollfd *fds; /* [0]: the wake-up; then one per fd */
    void **ptrs;        /* what each slot's fd was registered with */
    int *fd_of;         /* each slot's fd, also while fds[i].fd is -1 */
    size_t n, cap;      /* slots in use, allocated */
    size_t *slot_of;    /* fd -> 1 + its slot; 0: not here */
    size_t slot_cap;    /* fds that fit in slot_of */
    size_t next;        /* where the next scan of ready fds starts */
    compat_wakeup wake;
};

const char *poller_name(void)
{
    return "poll";
}

static short events_of(uint32_t mask)
{
    return (short)((mask & EV_READ ? POLLIN : 0) | (mask & EV_WRITE ? POLLOUT : 0));
}

static int grow(poller *p, int fd)
{
    if (p->n == p->cap) {
        size_t cap = p->cap * 2;
        struct pollfd *fds = realloc(p->fds, cap * sizeof *fds);
        void **ptrs;
        int *fd_of;

        if (fds == NULL)
            return -ENOMEM;
        p->fds = fds;
        ptrs = realloc(p->ptrs, cap * sizeof *ptrs);
        if (ptrs == NULL)
            return -ENOMEM;
        p->ptrs = ptrs;
        fd_of = realloc(p->fd_of, cap * sizeof *fd_of);
        if (fd_of == NULL)
            return -ENOMEM;
        p->fd_of = fd_of;
        p->cap = cap;
    }
    if ((size_t)fd >= p->slot_cap) {
        size_t cap = p->slot_cap;
        size_t *slot_of;

        while (cap <= (size_t)fd)
            cap *= 2;
        slot_of = realloc(p->slot_of, cap * sizeof *slot_of);
        if (slot_of == NULL)
            return -ENOMEM;
        memset(slot_of + p->slot_cap, 0, (cap - p->slot_cap) * sizeof *slot_of);
        p->slot_of = slot_of;
        p->slot_cap = cap;
    }
    return 0;
}

/* fd's slot, or 0 (the wake-up's, never an fd's) when it is not here. */
static size_t slot(const poller *p, int fd)
{
    if (fd < 0 || (size_t)fd >= p->slot_cap || p->slot_of[fd] == 0)
        return 0;
    return p->slot_of[fd] - 1;
}

int poller_new(poller **out)
{
    poller *p = calloc(1, sizeof *p);
    int rc;

    if (p == NULL)
        return -ENOMEM;
    p->wake.rd = p->wake.wr = -1;
    p->cap = 64;
    p->slot_cap = 64;
    p->fds = malloc(p->cap * sizeof *p->fds);
    p->ptrs = malloc(p->cap * sizeof *p->ptrs);
    p->fd_of = malloc(p->cap * sizeof *p->fd_of);
    p->slot_of = calloc(p->slot_cap, sizeof *p->slot_of);
    rc = p->fds == NULL || p->ptrs == NULL || p->fd_of == NULL || p->slot_of == NULL
             ? -ENOMEM
             : compat_wakeup_open(&p->wake);
    if (rc != 0) {
        poller_free(p);
        return rc;
    }
    p->fds[0] = (struct pollfd){.fd = p->wake.rd, .events = POLLIN};
    p->ptrs[0] = NULL;
    p->fd_of[0] = p->wake.rd;
    p->n = 1;
    *out = p;
    return 0;
}

void poller_free(poller *p)
{
    if (p == NULL)
        return;
    compat_wakeup_close(&p->wake);
    free(p->fds);
    free(p->ptrs);
    free(p->fd_of);
    free(p->slot_of);
    free(p);
}

int poller_add(poller *p, int fd, uint32_t mask, void *ptr)
{
    size_t i;
    int rc;

    if (fd < 0)
        return -EBADF;
    if (slot(p, fd) != 0 || fd == p->wake.rd)
        return -EEXIST;
    rc = grow(p, fd);
    if (rc != 0)
        return rc;
    i = p->n++;
    p->fds[i] = (struct pollfd){.fd = mask != 0 ? fd : -1, .events = events_of(mask)};
    p->ptrs[i] = ptr;
    p->fd_of[i] = fd;
    p->slot_of[fd] = i + 1;
    return 0;
}

int poller_mod(poller *p, int fd, uint32_t old, uint32_t mask, void *ptr)
{
    size_t i = slot(p, fd);

    (void)old;
    if (i == 0)
        return -ENOENT;
    p->fds[i].fd = mask != 0 ? fd : -1;
    p->fds[i].events = events_of(mask);
    p->fds[i].revents = 0;
    p->ptrs[i] = ptr;
    return 0;
}

int poller_del(poller *p, int fd, uint32_t old)
{
    size_t i = slot(p, fd), last;

    (void)old;
    if (i == 0)
        return -ENOENT;
    p->slot_of[fd] = 0;
    last = --p->n;
    if (i != last) {
        p->fds[i] = p->fds[last];
        p->ptrs[i] = p->ptrs[last];
        p->fd_of[i] = p->fd_of[last];
        p->slot_of[p->fd_of[i]] = i + 1;
    }
    return 0;
}

int poller_wait(poller *p, poller_event *out, int max, int timeout_ms)
{
    int n, got = 0;
    size_t i, scanned;

    if (p->n > (size_t)UINT_MAX)
        return -EOVERFLOW; /* nfds_t is at least an unsigned int */
    n = poll(p->fds, (nfds_t)p->n, timeout_ms < 0 ? -1 : timeout_ms);
    if (n < 0)
        return -errno;
    if (p->fds[0].revents != 0) {
        compat_wakeup_drain(&p->wake);
        n--;
    }
    /* Slots 1 .. n-1, starting where the last full batch stopped. */
    if (p->next == 0 || p->next >= p->n)
        p->next = 1;
    for (i = p->next, scanned = 0; n > 0 && scanned < p->n - 1; scanned++) {
        short r = p->fds[i].revents;

        if (r != 0 && p->fds[i].fd >= 0) {
            if (got == max) {
                p->next = i; /* the rest next time */
                return got;
            }
            out[got].ptr = p->ptrs[i];
            out[got++].ready = (r & POLLIN ? EV_READ : 0u) | (r & POLLOUT ? EV_WRITE : 0u) |
                               (r & (POLLERR | POLLHUP | POLLNVAL) ? EV_ERROR : 0u);
            n--;
        }
        if (++i == p->n)
            i = 1;
    }
    p->next = i;
    return got;
}

int poller_wake(poller *p)
{
    return compat_wakeup_signal(&p->wake);
}
