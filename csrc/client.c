/*
 * client.c - a blocking echo client with timeouts.
 *
 * The client runs the server's framing (echo_scan) over what it sends, so
 * echo() knows how many bytes to wait for and whether the quit word will end
 * the connection. A call interrupted by a signal returns -EINTR and keeps its
 * progress: calling it again with the same arguments resumes it, which lets
 * Python run signal handlers (Ctrl+C) in between.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "compat.h"
#include "net.h"
#include "outbuf.h"
#include "pyecho.h"
#include "tls.h"

#define TRACK_CHUNK (64 * 1024)
#define UDP_MAX (64 * 1024) /* more than any datagram's payload */
#define UDP_RECENT 16       /* datagrams sent whose late echo is recognised */
#define TLS_CHUNK (64 * 1024) /* plaintext sealed at a time: bounds the queue */
/* The queue's bound: our sealed chunk, and what OpenSSL answers while
 * reading (KeyUpdate, renegotiation) to a server that does not read. */
#define TLS_OUT_MAX (2 * TLS_CHUNK)
#define SURPLUS_SHOWN 40      /* TLS: surplus bytes kept for the error */

enum op { OP_NONE, OP_SEND, OP_ECHO };

struct echo_client {
    echo_config cfg;
    uint8_t quit_word[256];
    int fd;
    int timeout_ms;
    /* the server's framing state, mirrored */
    int cont;
    size_t held_len;    /* line mode: sent bytes of an unfinished line, */
    uint8_t *scratch;   /* kept at the start of this, then one chunk */
    size_t owed;        /* echo the server will send that was not received */
    int quit_sent;      /* the quit word went out: the server is closing */
    /* the operation in progress, if a signal interrupted it */
    enum op op;
    const uint8_t *op_buf;
    size_t op_len;
    size_t tracked;     /* bytes of op_buf fed through the framing: sendable */
    size_t sent, got, expect;
    int eof;
    uint64_t deadline_ms; /* UDP echo: the answer is due by then (timeout >= 0) */
    /* UDP: the datagrams sent last (a hash of each), to tell a late or
     * duplicated echo of one of them from a wrong answer */
    uint64_t recent[UDP_RECENT];
    unsigned recent_n;   /* how many were sent, all told */
    uint8_t *dgram;      /* UDP: room for any datagram that comes */
    /* TLS (echo_client_start_tls); tls is NULL over plain TCP */
    tls_ctx *tls_ctx;
    tls_conn *tls;
    outbuf tls_out;          /* records the socket did not take yet */
    echo_tls_error tls_err;  /* the last TLS failure */
    int tls_failed;
    int tls_want_read;       /* a write waits for OpenSSL to read (renegotiation) */
    uint8_t surplus[SURPLUS_SHOWN]; /* bytes beyond the echo, taken to be seen */
    size_t surplus_len;
};

/* FNV-1a over the length and the bytes: a datagram's fingerprint. */
static uint64_t dgram_hash(const uint8_t *buf, size_t len)
{
    uint64_t h = 0xcbf29ce484222325u ^ (uint64_t)len;

    for (size_t i = 0; i < len; i++) {
        h ^= buf[i];
        h *= 0x100000001b3u;
    }
    return h;
}

static void remember_sent(echo_client *cli, const uint8_t *buf, size_t len)
{
    cli->recent[cli->recent_n++ % UDP_RECENT] = dgram_hash(buf, len);
}

/* Is this datagram the echo of one of the last UDP_RECENT sent? */
static int sent_recently(const echo_client *cli, const uint8_t *buf, size_t len)
{
    uint64_t h = dgram_hash(buf, len);
    unsigned n = cli->recent_n < UDP_RECENT ? cli->recent_n : UDP_RECENT;

    for (unsigned i = 0; i < n; i++) {
        if (cli->recent[i] == h)
            return 1;
    }
    return 0;
}

/* Feed sent bytes through the framing; returns the reply bytes they cause. */
static size_t track(echo_client *cli, const uint8_t *buf, size_t len, int *quit)
{
    size_t total = 0;
    size_t piece = cli->cfg.mode == ECHO_MODE_SEED ? cli->cfg.bufsize : TRACK_CHUNK;

    *quit = 0;
    if (cli->cfg.mode == ECHO_MODE_RAW)
        return len;
    while (len > 0 && !*quit) {
        size_t n = len < piece ? len : piece;
        size_t all = cli->held_len + n, emit;

        memcpy(cli->scratch + cli->held_len, buf, n);
        emit = echo_scan(&cli->cfg, &cli->cont, cli->scratch, all, quit);
        total += emit;
        if (*quit) {
            cli->held_len = 0; /* the server drops what follows the quit */
        } else if (cli->cfg.mode == ECHO_MODE_LINE) {
            cli->held_len = all - emit;
            memmove(cli->scratch, cli->scratch + emit, cli->held_len);
        }
        buf += n;
        len -= n;
    }
    return total;
}

static void op_reset(echo_client *cli)
{
    cli->op = OP_NONE;
    cli->tracked = cli->sent = cli->got = cli->expect = 0;
}

/* Is this call the resumption of the interrupted one? */
static int op_resumes(const echo_client *cli, enum op op, const uint8_t *buf,
                      size_t len)
{
    return cli->op == op && cli->op_buf == buf && cli->op_len == len;
}

/*
 * Let the operation send more of its buffer: all of it, except in seed mode,
 * where it goes one piece of at most bufsize bytes at a time, each sent only
 * once the echo of the one before has arrived, so that each is one read of
 * the server, as the framing assumes. After the quit word nothing more is
 * tracked (in seed mode nothing more is sent either).
 */
static void track_more(echo_client *cli)
{
    size_t n = cli->op_len - cli->tracked;
    int quit = 0;

    if (cli->cfg.mode == ECHO_MODE_SEED && n > cli->cfg.bufsize)
        n = cli->cfg.bufsize;
    if (!cli->quit_sent) {
        cli->owed += track(cli, cli->op_buf + cli->tracked, n, &quit);
        cli->quit_sent = quit;
    }
    cli->tracked += n;
    cli->expect = cli->got + cli->owed;
}

/* Start an operation; -EPIPE if it would send after the quit word. */
static int op_begin(echo_client *cli, enum op op, const uint8_t *buf, size_t len)
{
    op_reset(cli);
    if (cli->quit_sent && len > 0)
        return -EPIPE;
    cli->op = op;
    cli->op_buf = buf;
    cli->op_len = len;
    track_more(cli);
    return 0;
}

/* Finish an operation with rc, keeping its progress only for -EINTR. */
static int op_end(echo_client *cli, int rc)
{
    if (rc != -EINTR)
        op_reset(cli);
    return rc;
}

int echo_client_new(const echo_config *cfg, const char *host, int port,
                    int timeout_ms, echo_client **out)
{
    echo_client *cli;
    int rc = echo_config_check(cfg);

    if (rc != 0 || host == NULL || out == NULL || port < 1 || port > 65535)
        return -EINVAL;
    cli = calloc(1, sizeof *cli);
    if (cli == NULL)
        return -ENOMEM;
    cli->cfg = *cfg;
    if (cfg->quit_word != NULL) {
        memcpy(cli->quit_word, cfg->quit_word, cfg->quit_len);
        cli->cfg.quit_word = cli->quit_word;
    }
    cli->fd = -1;
    cli->timeout_ms = timeout_ms;
    if (cfg->transport == ECHO_TCP && cfg->mode != ECHO_MODE_RAW) {
        size_t piece = cfg->mode == ECHO_MODE_SEED ? cfg->bufsize : TRACK_CHUNK;
        cli->scratch = malloc(cfg->max_line + piece);
        if (cli->scratch == NULL) {
            free(cli);
            return -ENOMEM;
        }
    }
    if (cfg->transport == ECHO_UDP) {
        cli->dgram = malloc(UDP_MAX);
        if (cli->dgram == NULL) {
            free(cli);
            return -ENOMEM;
        }
    }
    rc = net_connect(host, port, cfg->transport == ECHO_UDP ? SOCK_DGRAM : SOCK_STREAM,
                     timeout_ms, &cli->fd);
    if (rc != 0) {
        echo_client_free(cli);
        return rc;
    }
    *out = cli;
    return 0;
}

int echo_client_set_timeout(echo_client *cli, int timeout_ms)
{
    if (cli == NULL)
        return -EINVAL;
    cli->timeout_ms = timeout_ms;
    return 0;
}

int echo_client_quit_sent(const echo_client *cli)
{
    return cli != NULL && cli->quit_sent;
}

int echo_client_fileno(const echo_client *cli)
{
    return cli == NULL ? -1 : cli->fd;
}

/* ---- the stream: TCP, or TLS over it ------------------------------------ */

/* A failed TLS call as an error code: the socket's own (ECONNRESET...), or
 * -EBADMSG, its reason kept for echo_client_tls_error(). */
static int tls_failure(echo_client *cli)
{
    if (cli->tls->error != 0)
        return -cli->tls->error;
    tls_conn_why(cli->tls, &cli->tls_err);
    cli->tls_failed = 1;
    return -EBADMSG;
}

/* A failed socket call's errno as a result: -EAGAIN for "not now"
 * (EWOULDBLOCK, EINTR), else -errno. */
static int io_error(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -EAGAIN : -errno;
}

/* Records waiting to go: the operation is still sending. */
static int queued(const echo_client *cli)
{
    return cli->tls != NULL && cli->tls_out.len > 0;
}

/* Send queued records, without blocking; 0 or a negative errno. */
static int tls_flush(echo_client *cli)
{
    while (cli->tls_out.len > 0) {
        ssize_t n = send(cli->fd, outbuf_begin(&cli->tls_out), cli->tls_out.len,
                         COMPAT_MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n < 0)
            return io_error() == -EAGAIN ? 0 : -errno;
        outbuf_consume(&cli->tls_out, (size_t)n);
    }
    return 0;
}

/* Wait for the stream: plaintext TLS already decrypted is readable now. */
static int stream_wait(echo_client *cli, short events, int timeout_ms)
{
    if ((events & POLLIN) && cli->tls != NULL && tls_pending(cli->tls) > 0)
        return POLLIN;
    return net_wait(cli->fd, events, timeout_ms);
}

/* What sending waits for: room in the socket, or over TLS while the
 * server renegotiates, its answer (a write cannot go before it is read). */
static short send_events(const echo_client *cli)
{
    return cli->tls != NULL && cli->tls_want_read && !queued(cli) ? POLLIN : POLLOUT;
}

/* Up to cap bytes of the stream: how many, 0 at its end, -EAGAIN when none
 * came yet, or a negative errno. */
static ssize_t stream_recv(echo_client *cli, uint8_t *buf, size_t cap)
{
    ssize_t n;

    if (cli->tls != NULL) {
        cli->tls_want_read = 0; /* a write waiting for this read may go now */
        for (;;) {
            /* What OpenSSL answered while reading goes out before the server
             * waits for it (a renegotiation's ClientHello), as Python's ssl
             * sends it from its read; a send that fails here is seen failing
             * again, after the read shows why (the server's close). */
            (void)tls_flush(cli);
            /* The queue is full of OpenSSL's answers: wait until the server
             * takes some (each wait bounded), as Python's ssl does. */
            while (cli->tls_out.len >= TLS_OUT_MAX) {
                int rc = net_wait(cli->fd, POLLOUT, cli->timeout_ms);

                if (rc >= 0)
                    rc = tls_flush(cli);
                if (rc < 0)
                    return rc;
            }
            n = tls_read(cli->tls, buf, cap);
            if (n > 0)
                return n;
            if (n == 0 && cli->tls_out.len >= TLS_OUT_MAX)
                continue; /* OpenSSL must send before it reads on */
            if (n == 0)
                return -EAGAIN; /* a record without data (a session ticket), or none */
            return n == -1 ? 0 : tls_failure(cli);
        }
    }
    n = recv(cli->fd, buf, cap, 0);
    return n >= 0 ? n : io_error();
}

/* One non-blocking send of more of the operation's buffer (over TLS: the
 * queued records first, then the next chunk sealed). */
static int send_some(echo_client *cli)
{
    size_t len = cli->tracked - cli->sent;
    ssize_t n;

    if (cli->tls != NULL) {
        int rc = tls_flush(cli);

        if (rc != 0 || cli->tls_out.len > 0 || len == 0)
            return rc;
        if (len > TLS_CHUNK)
            len = TLS_CHUNK;
        rc = tls_write(cli->tls, cli->op_buf + cli->sent, len);
        if (rc < 0)
            return tls_failure(cli);
        cli->tls_want_read = rc == 0; /* the server renegotiates: its answer first */
        if (rc == 1)
            cli->sent += len;
        return 0;
    }
    n = send(cli->fd, cli->op_buf + cli->sent, len, COMPAT_MSG_NOSIGNAL);
    if (n >= 0) {
        cli->sent += (size_t)n;
        return 0;
    }
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
}

/* ---- UDP: a datagram out, a datagram back -------------------------------- */

static int udp_send(echo_client *cli, const uint8_t *buf, size_t len)
{
    for (;;) {
        int rc;

        if (send(cli->fd, buf, len, COMPAT_MSG_NOSIGNAL) >= 0) {
            remember_sent(cli, buf, len);
            return 0;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        rc = net_wait(cli->fd, POLLOUT, cli->timeout_ms);
        if (rc < 0)
            return rc;
    }
}

/* Wait for one datagram (until deadline_ms, if not 0; else timeout_ms); at
 * most cap bytes of it in buf, its length in *len (cap + 1 if it was longer:
 * compat.h). */
static int udp_recv(echo_client *cli, uint8_t *buf, size_t cap, size_t *len,
                    uint64_t deadline_ms)
{
    for (;;) {
        ssize_t n = compat_recv_dgram(cli->fd, buf, cap, MSG_DONTWAIT, len);
        int rc, wait_ms = cli->timeout_ms;

        if (n >= 0)
            return 0;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -errno; /* ECONNREFUSED: nothing listens there */
        if (deadline_ms != 0) {
            uint64_t now = net_now_ms();

            wait_ms = now >= deadline_ms ? 0 : (int)(deadline_ms - now);
        }
        rc = net_wait(cli->fd, POLLIN, wait_ms);
        if (rc < 0)
            return rc;
    }
}

/*
 * Echo over UDP: drop datagrams already waiting (late or duplicated answers
 * to earlier ones), send buf, and return the datagram that comes back,
 * within the timeout. A datagram equal to one of the last UDP_RECENT sent
 * (a late duplicate or a late answer still in flight when this began) is
 * skipped; any other one is -EPROTO, with as much of it as fits in reply.
 * A signal while waiting returns -EINTR; the same call then resumes waiting.
 */
static int udp_echo(echo_client *cli, const uint8_t *buf, size_t len, uint8_t *reply,
                    size_t cap, size_t *got)
{
    size_t n = 0;
    int rc;

    *got = 0;
    if (!op_resumes(cli, OP_ECHO, buf, len)) {
        op_reset(cli);
        while (recv(cli->fd, cli->dgram, UDP_MAX, MSG_DONTWAIT) >= 0 || errno == EINTR)
            ;
        rc = udp_send(cli, buf, len);
        if (rc != 0)
            return rc;
        cli->op = OP_ECHO;
        cli->op_buf = buf;
        cli->op_len = len;
        /* The clock counts from boot: a deadline is never 0 ("none"). */
        cli->deadline_ms = cli->timeout_ms < 0 ? 0 : net_now_ms() + (uint64_t)cli->timeout_ms;
    }
    for (;;) {
        rc = udp_recv(cli, cli->dgram, UDP_MAX, &n, cli->deadline_ms);
        if (rc != 0)
            return op_end(cli, rc);
        if (n > UDP_MAX)
            n = UDP_MAX; /* cannot be: no payload is that long */
        if (n == len && memcmp(cli->dgram, buf, len) == 0)
            break;
        if (!sent_recently(cli, cli->dgram, n)) {
            *got = n < cap ? n : cap;
            memcpy(reply, cli->dgram, *got);
            return op_end(cli, -EPROTO);
        }
    }
    memcpy(reply, buf, len);
    *got = len;
    return op_end(cli, ECHO_REPLY_OPEN);
}

/* ---- TCP ------------------------------------------------------------------ */

int echo_client_send(echo_client *cli, const uint8_t *buf, size_t len)
{
    if (cli == NULL || (buf == NULL && len > 0) || cli->fd < 0)
        return -EINVAL;
    if (cli->cfg.transport == ECHO_UDP)
        return udp_send(cli, buf, len);
    /* A seed message is one read: nothing longer can be framed by send(). */
    if (cli->cfg.mode == ECHO_MODE_SEED && len > cli->cfg.bufsize)
        return -EMSGSIZE;
    if (!op_resumes(cli, OP_SEND, buf, len)) {
        int rc = op_begin(cli, OP_SEND, buf, len);
        if (rc != 0)
            return rc;
    }
    while (cli->sent < len || queued(cli)) {
        int rc = net_wait(cli->fd, send_events(cli), cli->timeout_ms);

        if (rc > 0)
            rc = send_some(cli);
        if (rc != 0)
            return op_end(cli, rc);
    }
    return op_end(cli, 0);
}

int echo_client_recv(echo_client *cli, uint8_t *buf, size_t cap, size_t *got)
{
    ssize_t n;
    int rc;

    if (cli == NULL || buf == NULL || got == NULL || cli->fd < 0)
        return -EINVAL;
    *got = 0;
    if (cli->cfg.transport == ECHO_UDP) {
        rc = udp_recv(cli, buf, cap, got, 0);
        if (*got > cap)
            *got = cap; /* the rest of the datagram is gone */
        return rc;
    }
    for (;;) {
        rc = stream_wait(cli, POLLIN, cli->timeout_ms);
        if (rc < 0)
            return rc;
        n = stream_recv(cli, buf, cap);
        if (n >= 0) {
            *got = (size_t)n;
            cli->owed -= (size_t)n < cli->owed ? (size_t)n : cli->owed;
            return 0;
        }
        if (n != -EAGAIN)
            return (int)n;
    }
}

/* One non-blocking receive into the reply, never of more than is still
 * expected (once all is in, one byte: any is too many; over TCP it is
 * peeked at and stays in the socket for the caller to see, over TLS taken
 * into cli->surplus); sets cli->eof at end of stream. */
static int recv_some(echo_client *cli, uint8_t *reply)
{
    int more = cli->got < cli->expect;
    ssize_t n;

    if (more) {
        n = stream_recv(cli, reply + cli->got, cli->expect - cli->got);
    } else if (cli->tls != NULL) {
        n = stream_recv(cli, cli->surplus, 1);
        cli->surplus_len = n > 0 ? (size_t)n : 0;
    } else {
        uint8_t extra;

        n = recv(cli->fd, &extra, 1, MSG_PEEK);
        if (n < 0)
            n = io_error();
    }
    if (n > 0) {
        if (!more)
            return -EPROTO; /* more than the framing said the server would send */
        cli->got += (size_t)n;
        cli->owed -= (size_t)n < cli->owed ? (size_t)n : cli->owed;
        return 0;
    }
    if (n == 0) {
        cli->eof = 1;
        return 0;
    }
    if (n == -EAGAIN)
        return 0;
    /* After the quit word the server may reset instead of closing cleanly
     * if it had unread input: the connection is over either way. */
    if (cli->quit_sent && cli->got == cli->expect && n == -ECONNRESET) {
        cli->eof = 1;
        return 0;
    }
    return (int)n;
}

/* The whole echo is in: bytes already waiting are more than the framing
 * allows (a banner, a trailer, another mode). Over TLS, the plaintext
 * already decrypted (up to SURPLUS_SHOWN bytes of it taken, to be shown). */
static int check_surplus(echo_client *cli)
{
    uint8_t byte;
    ssize_t n;

    if (cli->tls != NULL) {
        size_t pending = tls_pending(cli->tls);

        if (pending == 0)
            return 0;
        n = tls_read(cli->tls, cli->surplus,
                     pending < sizeof cli->surplus ? pending : sizeof cli->surplus);
        cli->surplus_len = n > 0 ? (size_t)n : 0;
        return -EPROTO;
    }
    n = recv(cli->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 ? -EPROTO : 0;
}

int echo_client_echo(echo_client *cli, const uint8_t *buf, size_t len,
                     uint8_t *reply, size_t cap, size_t *got)
{
    if (cli == NULL || (buf == NULL && len > 0) || reply == NULL ||
        got == NULL || cli->fd < 0)
        return -EINVAL;
    if (cli->cfg.transport == ECHO_UDP)
        return cap < len ? -EINVAL : udp_echo(cli, buf, len, reply, cap, got);
    if (!op_resumes(cli, OP_ECHO, buf, len)) {
        int rc = cap < echo_client_reply_room(cli, len) ? -EINVAL
                                                         : op_begin(cli, OP_ECHO, buf, len);
        if (rc != 0)
            return rc;
    }
    cli->surplus_len = 0;
    for (;;) {
        int sending = cli->sent < cli->tracked || queued(cli);
        int receiving = !cli->eof && (cli->got < cli->expect || cli->quit_sent);
        short events = (short)((sending ? send_events(cli) : 0) | (receiving ? POLLIN : 0));
        int ready, rc = 0;

        *got = cli->got;
        if (!receiving && cli->got < cli->expect)
            return op_end(cli, ECHO_REPLY_SHORT);
        if (!receiving && !sending) {
            if (cli->eof)
                return op_end(cli, ECHO_REPLY_CLOSED);
            rc = check_surplus(cli);
            if (rc != 0)
                return op_end(cli, rc);
            if (cli->tracked == len)
                return op_end(cli, ECHO_REPLY_OPEN);
            track_more(cli); /* seed mode: the next piece */
            continue;
        }
        /* (plaintext already decrypted counts only for receiving: a write
         * waiting for the server's renegotiation waits for the socket) */
        ready = receiving ? stream_wait(cli, events, cli->timeout_ms)
                          : net_wait(cli->fd, events, cli->timeout_ms);
        if (ready < 0)
            return op_end(cli, ready);
        /* Errors and hang-ups show up through send() and recv(). */
        if (ready & (POLLERR | POLLHUP))
            ready |= events;
        /* What came first: a server that closed is seen closing (its FIN,
         * its close_notify) before a send into the closed connection fails
         * (EPIPE, once its FIN is in), as in the Python client. */
        if (receiving && (ready & POLLIN)) {
            rc = recv_some(cli, reply);
        } else if (sending && (ready & send_events(cli))) {
            rc = send_some(cli);
            /* The server may close on the quit word before taking the rest. */
            if ((rc == -EPIPE || rc == -ECONNRESET) && cli->quit_sent) {
                cli->sent = cli->tracked;
                if (cli->tls != NULL)
                    outbuf_consume(&cli->tls_out, cli->tls_out.len);
                rc = 0;
            }
        }
        if (rc != 0) {
            *got = cli->got;
            return op_end(cli, rc);
        }
    }
}

size_t echo_client_reply_room(const echo_client *cli, size_t len)
{
    /* The framing releases at most the held line and len new bytes. */
    return cli->owed + cli->held_len + len;
}

int echo_client_shutdown_write(echo_client *cli)
{
    if (cli == NULL || cli->fd < 0)
        return -EINVAL;
    if (cli->cfg.transport == ECHO_UDP)
        return -EOPNOTSUPP; /* datagrams have no end of stream */
    if (shutdown(cli->fd, SHUT_WR) != 0)
        return -errno;
    /* At EOF the server echoes a partial line too: it is owed now. */
    cli->owed += cli->held_len;
    cli->held_len = 0;
    return 0;
}

void echo_client_free(echo_client *cli)
{
    if (cli == NULL)
        return;
    /* No close_notify, as Python's SSLSocket.close(): the FIN ends it. */
    tls_conn_free(cli->tls);
    tls_ctx_free(cli->tls_ctx);
    outbuf_free(&cli->tls_out);
    if (cli->fd >= 0)
        close(cli->fd);
    free(cli->scratch);
    free(cli->dgram);
    free(cli);
}

/* ---- TLS ------------------------------------------------------------------ */

int echo_client_start_tls(echo_client *cli, const echo_tls_client_config *tls)
{
    int rc;

    if (cli == NULL || tls == NULL || cli->fd < 0 || cli->cfg.transport != ECHO_TCP ||
        cli->tls_ctx != NULL || cli->op != OP_NONE || cli->owed > 0 || cli->quit_sent)
        return -EINVAL;
    memset(&cli->tls_err, 0, sizeof cli->tls_err);
    cli->tls_failed = 0;
    rc = tls_client_ctx_new(tls, &cli->tls_ctx, cli->tls_err.reason, sizeof cli->tls_err.reason);
    if (rc != 0) {
        cli->tls_failed = cli->tls_err.reason[0] != '\0';
        return rc;
    }
    cli->tls = tls_client_conn_new(cli->tls_ctx, tls, cli->fd, &cli->tls_out);
    if (cli->tls == NULL) {
        tls_ctx_free(cli->tls_ctx);
        cli->tls_ctx = NULL;
        return -ENOMEM;
    }
    cli->tls->out_max = TLS_OUT_MAX;
    if (cli->tls->failed) { /* the server's name, refused */
        rc = tls_failure(cli);
        tls_conn_free(cli->tls);
        cli->tls = NULL;
        tls_ctx_free(cli->tls_ctx);
        cli->tls_ctx = NULL;
    }
    return rc;
}

int echo_client_handshake(echo_client *cli)
{
    if (cli == NULL || cli->tls == NULL)
        return -EINVAL;
    for (;;) {
        int done = cli->tls->ready ? 1 : tls_handshake(cli->tls);
        int rc = tls_flush(cli); /* our flight, or the alert that ends it */
        short events;

        if (done < 0)
            return tls_failure(cli);
        if (rc != 0)
            return rc;
        if (done == 1 && cli->tls_out.len == 0)
            return 0;
        events = (short)((cli->tls_out.len > 0 ? POLLOUT : 0) | (done == 0 ? POLLIN : 0));
        rc = net_wait(cli->fd, events, cli->timeout_ms);
        if (rc < 0)
            return rc; /* -EINTR: the handshake's state is kept; call again */
    }
}

int echo_client_tls_error(const echo_client *cli, echo_tls_error *out)
{
    if (cli == NULL || out == NULL || !cli->tls_failed)
        return -EINVAL;
    *out = cli->tls_err;
    return 0;
}

size_t echo_client_surplus(const echo_client *cli, uint8_t *buf, size_t cap)
{
    size_t n;

    if (cli == NULL || buf == NULL)
        return 0;
    n = cli->surplus_len < cap ? cli->surplus_len : cap;
    memcpy(buf, cli->surplus, n);
    return n;
}

int echo_client_tls_info(const echo_client *cli, char *version, size_t vlen, char *alpn,
                         size_t alen)
{
    if (cli == NULL || cli->tls == NULL || version == NULL || alpn == NULL)
        return -EINVAL;
    return tls_conn_info(cli->tls, version, vlen, alpn, alen) == 0 ? 0 : -EINVAL;
}
