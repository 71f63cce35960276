/*
 * poller.h - the operating system's readiness API, behind the event loop.
 *
 * loop.c calls only these six functions, as Redis's ae.c calls its
 * ae_epoll.c: another backend (poll, kqueue) is one new file that
 * implements them. Every function returns 0 (or a count) or a negative errno.
 */
#ifndef PYECHO_POLLER_H
#define PYECHO_POLLER_H

#include <stdint.h>

/* What a watcher waits for, and what a wait reports. */
enum {
    EV_READ = 1,
    EV_WRITE = 2,
    EV_ERROR = 4 /* reported only: an error or hang-up on the fd */
};

typedef struct poller poller;

typedef struct poller_event {
    void *ptr;      /* what was registered with the fd */
    uint32_t ready; /* EV_READ | EV_WRITE | EV_ERROR */
} poller_event;

int poller_new(poller **out);
void poller_free(poller *p);
/* Watch fd for mask (0: registered, nothing watched); ptr comes back. */
int poller_add(poller *p, int fd, uint32_t mask, void *ptr);
int poller_mod(poller *p, int fd, uint32_t mask, void *ptr);
int poller_del(poller *p, int fd);
/* Wait at most timeout_ms (-1: no limit) and fill at most max events:
 * how many, 0 when the time ran out, or -EINTR on a signal. */
int poller_wait(poller *p, poller_event *out, int max, int timeout_ms);

#endif
