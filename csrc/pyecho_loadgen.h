/*
 * pyecho_loadgen.h - the benchmark's load generator: its own shared library
 * (libpyecho_loadgen), apart from the product library libpyecho_core, which
 * exports the echo API only.
 *
 * This header is the single source of truth for the declarations
 * pyecho/bench/loadgen.py gives cffi (it drops the preprocessor lines), so
 * keep it to plain C declarations: no macros, no inline code. It needs no
 * other pyecho header. Every function that can fail returns a negative errno.
 */
#ifndef PYECHO_LOADGEN_H
#define PYECHO_LOADGEN_H

#include <stddef.h>
#include <stdint.h>

/* ---- the library itself ------------------------------------------------ */

/*
 * As pyecho.h's echo_abi_*: a loader checks echo_loadgen_abi_version()
 * against ECHO_LOADGEN_ABI_VERSION (raise it whenever a struct or signature
 * here changes) and echo_loadgen_abi_sizeof() of each struct against the
 * size it computes from this header.
 */
enum { ECHO_LOADGEN_ABI_VERSION = 1 };
int echo_loadgen_abi_version(void);
/* sizeof the struct named (e.g. "echo_loadgen_config"); 0 for an unknown name. */
size_t echo_loadgen_abi_sizeof(const char *name);

/* ---- load generator ---------------------------------------------------- */

/*
 * A closed-loop load generator for benchmarks (pyecho.bench): `connections`
 * connections, each keeping `depth` messages of `msg_size` bytes in flight
 * and sending the next one as soon as one is echoed whole. Every echoed byte
 * is checked against what was sent (each connection sends its own
 * deterministic pattern); a wrong byte, an extra byte or an early close stops
 * the run with an error instead of producing a number. Per-message latency
 * (first byte sent to last byte echoed) goes into a fixed-size log-linear
 * histogram, exact to about 3 %. One thread, one event loop over the core's
 * poller.h (epoll on Linux), bounded memory.
 *
 * Over UDP (transport ECHO_LOADGEN_UDP) a connection is a connected UDP socket and a
 * message one datagram, sent with sendmmsg() and received with recvmmsg() in
 * batches (one send() or recv() each where the system lacks them). Each datagram starts with its socket's index and its sequence
 * number, followed by the socket's pattern: a wrong byte or size is a
 * MISMATCH, a datagram echoed twice is EXTRA. Nothing is retransmitted: a
 * datagram not echoed within loss_timeout_ms is counted in res->lost and its
 * place in the window is used again (one that comes back after that is
 * counted in res->late, not as an echo).
 *
 * Use: echo_loadgen_new(), echo_loadgen_connect() (opens every connection
 * and does one verified round trip on each, so the server has accepted them
 * all), then echo_loadgen_run() as often as wanted (each run stops sending at
 * its deadline and drains what is in flight, so runs are self-contained),
 * then echo_loadgen_free(). On failure the functions return a negative errno
 * and res->error_kind says what went wrong.
 */

typedef struct echo_loadgen echo_loadgen;

/* The same values as pyecho.h's enum echo_transport and enum echo_mode. */
enum echo_loadgen_transport {
    ECHO_LOADGEN_TCP = 0,
    ECHO_LOADGEN_UDP = 1
};

enum echo_loadgen_mode {
    ECHO_LOADGEN_RAW = 0,  /* every byte echoed */
    ECHO_LOADGEN_LINE = 1, /* lines: each message ends with its one newline */
    ECHO_LOADGEN_SEED = 2  /* one read is one message: no newline in it */
};

typedef struct echo_loadgen_config {
    uint32_t connections;    /* 1 .. 1000000 */
    uint32_t depth;          /* messages in flight per connection, 1 .. 1024 */
    size_t msg_size;         /* bytes per message, 1 .. 4 MiB, and
                                max(depth, 8) x msg_size at most 32 MiB */
    int mode;                /* enum echo_loadgen_mode: the server's mode;
                                messages are made so that it echoes them
                                unchanged (line: one line each; seed: no
                                newline) */
    uint32_t connect_window; /* connections being opened at once; 0: 64 */
    uint32_t timeout_ms;     /* longest wait without progress; 0: 10000 */
    int transport;           /* enum echo_loadgen_transport; UDP: raw mode,
                                msg_size 8 .. 65507 */
    uint32_t loss_timeout_ms; /* UDP: a datagram not echoed within this is
                                 lost; 0: 500 */
} echo_loadgen_config;

enum echo_loadgen_error {
    ECHO_LOADGEN_OK = 0,
    ECHO_LOADGEN_CONNECT = 1,  /* a connection could not be opened */
    ECHO_LOADGEN_MISMATCH = 2, /* an echoed byte differs from the one sent
                                  (UDP: or an echoed datagram's size) */
    ECHO_LOADGEN_CLOSED = 3,   /* the server closed a connection early (UDP:
                                  its port refused a datagram) */
    ECHO_LOADGEN_IO = 4,       /* a socket or poller call failed */
    ECHO_LOADGEN_TIMEOUT = 5,  /* no progress for timeout_ms */
    ECHO_LOADGEN_EXTRA = 6,    /* more bytes came back than were sent (UDP:
                                  a datagram came back twice) */
    ECHO_LOADGEN_USAGE = 7     /* bad argument or call order */
};

typedef struct echo_loadgen_result {
    uint64_t round_trips;  /* messages (UDP: datagrams) echoed whole and verified */
    uint64_t bytes;        /* echoed bytes verified */
    uint64_t elapsed_ns;   /* from the start of the run to the last echo */
    uint64_t lat_count;    /* latencies recorded (= round_trips) */
    uint64_t lat_min_ns;
    uint64_t lat_mean_ns;
    uint64_t lat_p50_ns;
    uint64_t lat_p90_ns;
    uint64_t lat_p99_ns;
    uint64_t lat_p999_ns;
    uint64_t lat_max_ns;
    int error;             /* 0, or the negative errno returned */
    int error_kind;        /* enum echo_loadgen_error */
    uint32_t error_conn;   /* index of the connection it happened on */
    uint64_t error_offset; /* stream offset of the first bad byte (UDP: its
                              offset in the datagram) */
    uint8_t error_expected; /* MISMATCH: the byte sent ... */
    uint8_t error_got;      /* ... and the byte echoed */
    uint64_t lost;          /* UDP: datagrams not echoed within the loss timeout */
    uint64_t late;          /* UDP: echoes that came after that (not counted) */
    uint64_t error_datagram; /* UDP: sequence number of the datagram at fault
                                (UINT64_MAX: unknown) */
    uint64_t error_size;    /* UDP: its size */
} echo_loadgen_result;

/* Check cfg and allocate; no connection is opened yet. */
int echo_loadgen_new(const echo_loadgen_config *cfg, echo_loadgen **out);
/* Open every connection to a numeric host and port, one round trip each. */
int echo_loadgen_connect(echo_loadgen *lg, const char *host, int port,
                         echo_loadgen_result *res);
/*
 * Run the closed loop for duration_ms, then drain: res gets the figures of
 * this run only. -EINTR when a signal arrived (the connections are then in an
 * unknown state: free them).
 */
int echo_loadgen_run(echo_loadgen *lg, uint32_t duration_ms,
                     echo_loadgen_result *res);
/* The value (ns) below which a fraction q (0..1) of the last run's
 * latencies fall; 0 if there were none. */
uint64_t echo_loadgen_percentile(const echo_loadgen *lg, double q);
/* Connections open now. */
uint32_t echo_loadgen_open(const echo_loadgen *lg);
/* Close every connection and free. */
void echo_loadgen_free(echo_loadgen *lg);

#endif
