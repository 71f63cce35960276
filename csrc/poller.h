/*
 * poller.h - the operating system's readiness API, behind the event loop.
 *
 * loop.c calls only these functions, as Redis's ae.c calls its ae_epoll.c.
 * Each backend is one file, chosen by CMake (PYECHO_POLLER): epoll (Linux),
 * kqueue (macOS, the BSDs) or poll (any POSIX system); nothing else knows
 * which one runs. Every function returns 0 (or a count) or a negative errno.
 *
 * A mask of 0 means "not polled at all": no readiness, and no error or
 * hang-up either (epoll and poll() report those for any fd they hold, so a
 * reset connection the server deliberately is not watching would wake the
 * loop again and again). The caller passes the mask it set last (`old`),
 * which is all a backend needs to know what the kernel holds.
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
/* Which backend this is: "epoll", "kqueue" or "poll". */
const char *poller_name(void);
/* Start on fd, watching mask (0: nothing, not polled); ptr comes back. */
int poller_add(poller *p, int fd, uint32_t mask, void *ptr);
/* Watch mask instead of old (what add or mod set last). */
int poller_mod(poller *p, int fd, uint32_t old, uint32_t mask, void *ptr);
/* Forget fd, before it is closed; old as for poller_mod. */
int poller_del(poller *p, int fd, uint32_t old);
/*
 * Wait at most timeout_ms (-1: no limit) and fill at most max events (an fd
 * may come in two events, one per direction, with kqueue): how many, 0 when
 * the time ran out or poller_wake() ended the wait, -EINTR on a signal.
 * Ready fds come in no particular order: each backend has its own.
 */
int poller_wait(poller *p, poller_event *out, int max, int timeout_ms);
/* End a poller_wait() now or the next one soon; from any thread or a signal
 * handler. */
int poller_wake(poller *p);

#endif
