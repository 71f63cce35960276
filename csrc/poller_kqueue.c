/*
 * poller_kqueue.c - poller.h over kqueue (macOS, FreeBSD, the other BSDs),
 * after Redis's ae_kqueue.c and libuv.
 *
 * kqueue watches (fd, filter) pairs: an fd has a read filter, added with
 * the fd (enabled or not), and a write filter, added the first time it is
 * wanted; after that each is only enabled and disabled. A disabled filter
 * reports nothing at all, errors included, so an empty mask is "not
 * polled". A ready fd may come as two events, one per filter. The wake-up
 * is an EVFILT_USER event where the system has one, else a self-pipe.
 *
 * This file is compiled and linked for macOS and FreeBSD in CI (a cross
 * build: tools/cross.sh); it cannot run there, so its logic stays as plain
 * as the other backends' and the loop's tests run it wherever kqueue exists.
 */
#define _GNU_SOURCE /* struct mmsghdr in compat.h, on glibc */
#include "poller.h"

/* <sys/event.h> defines EV_ERROR, a kevent flag, as a macro: poller.h's
 * EV_ERROR goes by another name here. */
enum { POLLER_ERROR = EV_ERROR };

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>
#include <unistd.h>

#include "compat.h"

#define BATCH 256 /* events taken from the kernel per wait */

#ifdef EVFILT_USER
#define WAKE_IDENT 0 /* EVFILT_USER idents are not fds: any number */
#endif

struct poller {
    int kq;
#ifndef EVFILT_USER
    compat_wakeup wake;
#endif
    struct kevent events[BATCH];
};

const char *poller_name(void)
{
    return "kqueue";
}

/* One change to the kqueue, applied now. */
static int change(poller *p, uintptr_t ident, short filter, unsigned short flags,
                  unsigned int fflags, void *ptr)
{
    struct kevent ev;

    EV_SET(&ev, ident, filter, flags, fflags, 0, ptr);
    return kevent(p->kq, &ev, 1, NULL, 0, NULL) == 0 ? 0 : -errno;
}

int poller_new(poller **out)
{
    poller *p = calloc(1, sizeof *p);
    int rc = 0;

    if (p == NULL)
        return -ENOMEM;
#ifndef EVFILT_USER
    p->wake.rd = p->wake.wr = -1;
#endif
    p->kq = kqueue();
    if (p->kq < 0) {
        rc = -errno;
        free(p);
        return rc;
    }
    /* A kqueue is not inherited by fork(); nor should it be by exec(). */
    if (fcntl(p->kq, F_SETFD, FD_CLOEXEC) != 0)
        rc = -errno;
#ifdef EVFILT_USER
    if (rc == 0)
        rc = change(p, WAKE_IDENT, EVFILT_USER, EV_ADD | EV_CLEAR, 0, NULL);
#else
    if (rc == 0)
        rc = compat_wakeup_open(&p->wake);
    if (rc == 0)
        rc = change(p, (uintptr_t)p->wake.rd, EVFILT_READ, EV_ADD, 0, &p->wake);
#endif
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
#ifndef EVFILT_USER
    compat_wakeup_close(&p->wake);
#endif
    close(p->kq);
    free(p);
}

int poller_add(poller *p, int fd, uint32_t mask, void *ptr)
{
    int rc = change(p, (uintptr_t)fd, EVFILT_READ,
                    EV_ADD | (mask & EV_READ ? EV_ENABLE : EV_DISABLE), 0, ptr);

    if (rc == 0 && (mask & EV_WRITE)) {
        rc = change(p, (uintptr_t)fd, EVFILT_WRITE, EV_ADD | EV_ENABLE, 0, ptr);
        if (rc != 0)
            (void)change(p, (uintptr_t)fd, EVFILT_READ, EV_DELETE, 0, NULL);
    }
    return rc;
}

int poller_mod(poller *p, int fd, uint32_t old, uint32_t mask, void *ptr)
{
    int rc = 0;

    if ((old ^ mask) & EV_READ)
        rc = change(p, (uintptr_t)fd, EVFILT_READ, mask & EV_READ ? EV_ENABLE : EV_DISABLE,
                    0, ptr);
    if (rc == 0 && ((old ^ mask) & EV_WRITE)) {
        if (mask & EV_WRITE) {
            /* EV_ADD: the filter is added the first time, enabled after. */
            rc = change(p, (uintptr_t)fd, EVFILT_WRITE, EV_ADD | EV_ENABLE, 0, ptr);
        } else {
            rc = change(p, (uintptr_t)fd, EVFILT_WRITE, EV_DISABLE, 0, ptr);
        }
    }
    return rc;
}

int poller_del(poller *p, int fd, uint32_t old)
{
    int rc = change(p, (uintptr_t)fd, EVFILT_READ, EV_DELETE, 0, NULL);

    (void)old;
    /* The write filter is there only if it was ever wanted. */
    (void)change(p, (uintptr_t)fd, EVFILT_WRITE, EV_DELETE, 0, NULL);
    return rc;
}

int poller_wait(poller *p, poller_event *out, int max, int timeout_ms)
{
    struct timespec ts, *tsp = NULL;
    int n, got = 0;

    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tsp = &ts;
    }
    n = kevent(p->kq, NULL, 0, p->events, max < BATCH ? max : BATCH, tsp);
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        const struct kevent *e = &p->events[i];

#ifdef EVFILT_USER
        if (e->filter == EVFILT_USER)
            continue;
#else
        if (e->udata == (void *)&p->wake) {
            compat_wakeup_drain(&p->wake);
            continue;
        }
#endif
        out[got].ptr = e->udata;
        if (e->filter == EVFILT_READ)
            out[got].ready = EV_READ;
        else
            out[got].ready = EV_WRITE;
        /* EOF with an error (a reset), or the peer gone while writing: the
         * next I/O call says which. EOF alone on the read side is a FIN,
         * which read() returns as 0. */
        if ((e->flags & EV_ERROR) || ((e->flags & EV_EOF) &&
                                      (e->fflags != 0 || e->filter == EVFILT_WRITE)))
            out[got].ready |= POLLER_ERROR;
        got++;
    }
    return got;
}

int poller_wake(poller *p)
{
#ifdef EVFILT_USER
    /* kevent() is a plain system call: safe in a signal handler. */
    return change(p, WAKE_IDENT, EVFILT_USER, 0, NOTE_TRIGGER, NULL);
#else
    return compat_wakeup_signal(&p->wake);
#endif
}
