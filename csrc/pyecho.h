/*
 * pyecho.h - public interface of the pyecho C core.
 *
 * This header is the single source of truth for the declarations Python
 * uses: pyecho/_native.py feeds it to cffi after dropping preprocessor lines,
 * so keep it to plain C declarations (no macros, no inline code).
 *
 * Conventions: every function that can fail returns an int, 0 (or a positive
 * status) on success and a negative errno value on failure (-EINVAL for a bad
 * argument). Nothing here prints, exits or raises SIGPIPE.
 *
 * The library is built with hidden visibility (CMakeLists.txt): what this
 * header declares, between the two visibility pragmas, is all it exports,
 * on ELF and Mach-O alike. (The pragmas are preprocessor lines, which cffi
 * never sees.)
 */
#ifndef PYECHO_H
#define PYECHO_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#pragma GCC visibility push(default)
#endif

/* ---- the library itself ------------------------------------------------ */

/*
 * A loader checks that the library it opened was built from this header:
 * echo_abi_version() must equal ECHO_ABI_VERSION (raise it whenever a struct
 * or signature here changes), and echo_abi_sizeof() of each struct must
 * equal the size the loader computes from this header.
 */
enum { ECHO_ABI_VERSION = 9 };
int echo_abi_version(void);
/* sizeof the struct named (e.g. "echo_config"); 0 for an unknown name. */
size_t echo_abi_sizeof(const char *name);

/* ---- protocol ---------------------------------------------------------- */

enum echo_transport {
    ECHO_TCP = 0, /* a stream per client, framed by the mode */
    ECHO_UDP = 1  /* RFC 862 over UDP: every datagram echoed whole */
};

enum echo_mode {
    ECHO_MODE_RAW = 0,  /* RFC 862: every byte echoed, no commands */
    ECHO_MODE_LINE = 1, /* newline-terminated lines, quit word, max_line */
    ECHO_MODE_SEED = 2  /* the original server.c: one read is one message */
};

/* Why a connection was closed; also the index into echo_stats.closed. */
enum echo_close_reason {
    ECHO_CLOSE_PEER = 0,     /* the peer closed (EOF) after its echo drained */
    ECHO_CLOSE_QUIT = 1,     /* the peer sent the quit word */
    ECHO_CLOSE_RESET = 2,    /* the connection was reset or failed */
    ECHO_CLOSE_SHUTDOWN = 3, /* the server stopped while it was open */
    ECHO_CLOSE_IDLE = 4,     /* silent for longer than idle_timeout */
    ECHO_CLOSE_LIMIT = 5,    /* fault: `limit` bytes were echoed */
    ECHO_CLOSE_RESET_AFTER = 6, /* fault: reset `reset_after` after opening */
    ECHO_CLOSE_REFUSED = 7,  /* fault: reset at once (`refuse`) */
    ECHO_CLOSE_HANDSHAKE = 8, /* TLS: the handshake failed or was given up
                                 (or the `handshake_reset` fault) */
    ECHO_CLOSE_REASONS = 9
};

/* Why a datagram was not echoed (UDP); the index into echo_stats.dropped. */
enum echo_drop_reason {
    ECHO_DROP_GUARD = 0,       /* from port 0, a self-answering service's port,
                                  or a multicast or broadcast address; or sent
                                  to a broadcast or multicast address */
    ECHO_DROP_RATE_SOURCE = 1, /* over udp_rate_per_source */
    ECHO_DROP_RATE_GLOBAL = 2, /* over udp_rate */
    ECHO_DROP_FULL = 3,        /* the socket's send buffer was full */
    ECHO_DROP_ERROR = 4,       /* sending it failed (too big, no route...) */
    ECHO_DROP_FAULT = 5,       /* fault: `drop` chose it */
    ECHO_DROP_LOOP = 6,        /* an echo loop: from the server's own port, or
                                  more than udp_loop_limit echoes in a row */
    ECHO_DROP_SHUTDOWN = 7,    /* held by `latency` when the server stopped */
    ECHO_DROP_REASONS = 8
};

typedef struct echo_config {
    int transport;             /* enum echo_transport */
    int mode;                  /* enum echo_mode (TCP) */
    const uint8_t *quit_word;  /* NULL: no quit word */
    size_t quit_len;
    size_t bufsize;            /* seed mode: bytes per read (the original: 99) */
    size_t max_line;           /* line mode: longest line echoed whole */
    size_t max_pending;        /* output queued per connection before reading pauses */
    uint32_t max_clients;      /* 0: no limit */
    uint32_t idle_timeout_ms;  /* 0: never */
    int backlog;
    int udp_guard;             /* 1: drop datagrams from ports and addresses
                                  that could answer (echo loops, reflection) */
    uint32_t udp_rate;         /* datagrams echoed per second in all; 0: no limit */
    uint32_t udp_rate_per_source; /* ... to one address and port; 0: no limit */
    uint32_t udp_loop_limit;   /* datagrams in a row from one source that
                                  bring nothing new (only payloads echoed to
                                  it before) before it is taken for a loop;
                                  0: no limit */
} echo_config;

/* Fill cfg with the documented defaults (TCP, seed mode, quit word "exit"). */
void echo_config_default(echo_config *cfg);
/* 0 if cfg is usable, -EINVAL otherwise. */
int echo_config_check(const echo_config *cfg);

/*
 * Framing, as a pure function (no I/O). buf holds the bytes a connection has
 * received and not yet echoed; *cont is 1 while inside a line longer than
 * max_line. Returns how many leading bytes of buf to echo now; the rest stay
 * pending (line mode only, always fewer than max_line bytes). *quit is set to
 * 1 when the quit word ends the connection: the returned prefix is still
 * echoed, everything after it is dropped.
 */
size_t echo_scan(const echo_config *cfg, int *cont, const uint8_t *buf,
                 size_t len, int *quit);

/* ---- faults: a server that misbehaves on purpose ------------------------ */

/*
 * What the server does to its echo, on purpose, for testing clients against
 * a bad network (toxiproxy's vocabulary). All off (echo_faults_default) costs
 * nothing. Random choices (jitter, refuse, drop, duplicate) come from one
 * generator per connection seeded with (seed, connection id), and one for
 * UDP seeded with (seed, 0): a run is reproducible, and pyecho's Python
 * engine makes the same choices for the same seed. docs/PROTOCOL.md says
 * exactly what each field does.
 */
typedef struct echo_faults {
    uint32_t latency_ms;      /* each chunk of echo is held this long ... */
    uint32_t jitter_ms;       /* ... plus or minus up to this (whole ms) */
    uint64_t rate;            /* TCP: echo bytes per second; 0: no limit */
    uint32_t slice;           /* TCP: echo sent in pieces of at most this; 0: whole */
    uint32_t slice_delay_ms;  /* TCP: between pieces */
    int64_t limit;            /* TCP: bytes of echo, then the connection closes; -1: none */
    int64_t reset_after_ms;   /* TCP: reset (RST) this long after opening; -1: never */
    int64_t stall_after;      /* TCP: bytes of echo, then no more; -1: never */
    uint32_t close_delay_ms;  /* TCP: a close the server decides waits this long */
    uint32_t accept_delay_ms; /* TCP: a new connection waits this long to be served */
    uint32_t refuse_ppm;      /* TCP: chance, per million, a connection is reset at once */
    uint32_t drop_ppm;        /* UDP: chance, per million, a datagram is not echoed */
    uint32_t duplicate_ppm;   /* UDP: chance, per million, a datagram is echoed twice */
    uint64_t seed;
    /* TLS servers only (echo_server_set_tls): */
    uint32_t handshake_delay_ms;  /* TCP: wait this long before answering the ClientHello */
    int handshake_stall;          /* TCP: 1: never answer it (input is read and dropped) */
    uint32_t handshake_reset_ppm; /* TCP: chance, per million, of a reset when it arrives */
} echo_faults;

/* Everything off. */
void echo_faults_default(echo_faults *f);
/* 0 if f is usable with the transport, -EINVAL otherwise (out of range, or a
 * TCP-only field set for UDP or the reverse). */
int echo_faults_check(const echo_faults *f, int transport);

/* ---- server ------------------------------------------------------------ */

typedef struct echo_server echo_server;

typedef struct echo_stats {
    uint64_t accepted;   /* connections accepted and served */
    uint64_t open;       /* connections open now */
    uint64_t rejected;   /* closed at once because max_clients were open */
    uint64_t bytes_in;   /* bytes read from clients (UDP: in datagrams) */
    uint64_t bytes_out;  /* bytes written to clients (UDP: echoed) */
    uint64_t closed[16]; /* closes by enum echo_close_reason (room to grow) */
    uint64_t datagrams_in;  /* UDP: datagrams received */
    uint64_t datagrams_out; /* UDP: datagrams echoed (a duplicate counts) */
    uint64_t dropped[16];   /* UDP: by enum echo_drop_reason (room to grow) */
} echo_stats;

enum echo_event_kind {
    ECHO_EVENT_OPEN = 0,  /* a connection opened */
    ECHO_EVENT_CLOSE = 1, /* a connection closed: reason */
    ECHO_EVENT_DROP = 2   /* UDP: datagrams dropped for reason (at most one
                             such event per reason per second: count is how
                             many since the last one; host/port: the latest) */
};

typedef struct echo_event {
    int kind;          /* enum echo_event_kind */
    uint64_t conn_id;  /* 1, 2, ... in accept order (0 for DROP) */
    int reason;        /* enum echo_close_reason or echo_drop_reason */
    char host[64];     /* peer address, numeric ("fe80::1%eth0": scope kept) */
    int port;
    uint64_t count;    /* DROP: datagrams */
} echo_event;

/* Called on the serving thread when a connection opens or closes. */
typedef void (*echo_event_fn)(void *ctx, const echo_event *event);

/*
 * Create a server listening on a numeric host ("127.0.0.1", "::1", "::",
 * "fe80::1%eth0") and port (0: any free port), TCP or UDP as cfg says. "::"
 * serves IPv4 too (dual stack). cfg is copied, quit word included.
 */
int echo_server_new(const echo_config *cfg, const char *host, int port,
                    echo_server **out);
/* The address actually bound, numeric. */
int echo_server_address(const echo_server *srv, char *host, size_t hostlen,
                        int *port);
void echo_server_set_event_fn(echo_server *srv, echo_event_fn fn, void *ctx);

/*
 * Serve for at most timeout_ms (-1: until stopped). Returns 1 if the time ran
 * out while still serving, 0 once echo_server_stop() was called (every client
 * connection is then closed), -EINTR when a signal arrived (call it again once
 * the signal is handled), or another negative errno on failure (-ENOMEM: one
 * of the server's timers could not start; running again re-arms it).
 */
int echo_server_run(echo_server *srv, int timeout_ms);
/* Ask a running server to stop; safe from any thread or a signal handler. */
int echo_server_stop(echo_server *srv);
/*
 * Change the server's faults (NULL: none), from any thread, serving or not.
 * The serving loop applies them within one turn, to open connections too.
 * f is copied.
 */
int echo_server_set_faults(echo_server *srv, const echo_faults *f);
/* A consistent-enough snapshot, safe from any thread while serving. */
void echo_server_stats(const echo_server *srv, echo_stats *out);
/* Close every socket and free. Not while echo_server_run() is running. */
void echo_server_free(echo_server *srv);

/* ---- TLS --------------------------------------------------------------- */

/*
 * TLS on a TCP server (csrc/tls.c, OpenSSL). A library built without OpenSSL
 * has echo_tls_available() 0 and echo_server_set_tls() fails with
 * -EPROTONOSUPPORT. The certificate files come from Python (pyecho/_tls.py).
 */
typedef struct echo_tls_config {
    const char *certfile;     /* PEM: the certificate chain */
    const char *keyfile;      /* PEM: its private key */
    const char *cafile;       /* PEM: verifies client certificates; NULL: none */
    int client_cert;          /* 0: not asked for, 1: optional, 2: required */
    int min_version;          /* 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3) */
    int max_version;          /* 0: no maximum */
    const uint8_t *alpn;      /* ALPN protocols, wire format; NULL: none */
    size_t alpn_len;
} echo_tls_config;

/* 1 if the library was built with OpenSSL, 0 if not. */
int echo_tls_available(void);
/* The OpenSSL version the library runs with, or why there is none. */
const char *echo_tls_version(void);
/*
 * Serve TLS on every connection accepted from now on (before serving). The
 * files are loaded at once: -ENOENT, -EACCES, or -EINVAL (and text from
 * echo_tls_error()) for files OpenSSL refuses. TCP only (-EINVAL for UDP).
 */
int echo_server_set_tls(echo_server *srv, const echo_tls_config *tls);
/* OpenSSL's message for the last echo_server_set_tls() failure ("" if none). */
const char *echo_server_tls_error(const echo_server *srv);

/* ---- client ------------------------------------------------------------ */

typedef struct echo_client echo_client;

/*
 * Connect to a numeric host and port; timeout_ms < 0 waits forever. Over UDP
 * (cfg->transport) the socket is connected to the server, and echo() sends
 * one datagram and returns the one that comes back within the timeout
 * (-ETIMEDOUT if none came); datagrams already waiting are dropped first,
 * and one equal to any of the last 16 sent (a late or duplicated echo) is
 * skipped. Any other datagram is -EPROTO, with as much of it as fits in
 * reply (*got bytes).
 */
int echo_client_new(const echo_config *cfg, const char *host, int port,
                    int timeout_ms, echo_client **out);
/*
 * Send all of buf; its echo is owed until received. Once the quit word was
 * sent (by this or echo()), sending more fails with -EPIPE: the server is
 * closing the connection. In seed mode a message is one read of the server,
 * so buf may hold at most bufsize bytes (-EMSGSIZE otherwise).
 */
int echo_client_send(echo_client *cli, const uint8_t *buf, size_t len);
/* Receive up to cap bytes into buf (paying off the owed echo); *got is 0
 * at end of stream. */
int echo_client_recv(echo_client *cli, uint8_t *buf, size_t cap, size_t *got);
/*
 * Send buf and receive every echo still owed: what the server's framing
 * releases for buf and for earlier sends not yet received (in line mode,
 * earlier sent bytes of the same line). Sends and receives at once, so a
 * large buf cannot deadlock. reply needs echo_client_reply_room(cli, len)
 * bytes. When the framing says the quit word ends the connection, waits for
 * the server to close it. In seed mode, buf goes in pieces of at most bufsize
 * bytes, each sent once the echo of the one before arrived (each piece is one
 * read of the server); nothing after a piece that is the quit word is sent.
 * Once the whole echo is in, bytes already waiting are more than the server
 * may send: -EPROTO, with the *got bytes of echo in reply and the surplus
 * left unread in the socket. Returns an echo_reply, or a negative errno.
 */
enum echo_reply {
    ECHO_REPLY_OPEN = 0,   /* the whole reply; the connection is open */
    ECHO_REPLY_CLOSED = 1, /* the whole reply, then the server closed */
    ECHO_REPLY_SHORT = 2   /* the server closed before all of it (*got) */
};
int echo_client_echo(echo_client *cli, const uint8_t *buf, size_t len,
                     uint8_t *reply, size_t cap, size_t *got);
int echo_client_set_timeout(echo_client *cli, int timeout_ms);
/* 1 once the quit word was sent: the server is closing the connection. */
int echo_client_quit_sent(const echo_client *cli);
/* The most bytes echo_client_echo() of len bytes can return. */
size_t echo_client_reply_room(const echo_client *cli, size_t len);
/* Half-close: no more sends. The server echoes a partial line at EOF, so it
 * is owed from now on; replies can still be received. */
int echo_client_shutdown_write(echo_client *cli);
int echo_client_fileno(const echo_client *cli);
void echo_client_free(echo_client *cli);

/* ---- client over TLS ---------------------------------------------------- */

/*
 * What a TLS client trusts and presents: pyecho/_tls.py fills it from an
 * ssl.SSLContext (the numbers are the ones Python's ssl shows, which are
 * OpenSSL's), so the C client's context is the one Python's ssl would build.
 */
typedef struct echo_tls_client_config {
    const char *server_hostname; /* SNI (not for an IP address), the name checked */
    int verify;                  /* 1: the server's certificate must verify */
    int check_hostname;          /* 1: ... and be for server_hostname */
    int check_common_name;       /* 1: the subject's CN counts as a name too */
    const char *ca_pem;          /* trusted CA certificates, PEM; NULL: none */
    size_t ca_pem_len;
    const char *capath;          /* a hashed folder of CA certificates; NULL: none */
    int default_paths;           /* 1: also OpenSSL's default CA file and folder */
    const char *cert_pem;        /* the client's certificate chain, PEM; NULL: none */
    size_t cert_pem_len;
    const char *key_pem;         /* its private key, PEM (unencrypted); NULL: in cert_pem */
    size_t key_pem_len;
    const char *ciphers;         /* OpenSSL cipher list; NULL: CPython's default */
    int min_version;             /* 0x0303 (TLS 1.2), 0x0304 (TLS 1.3); 0: any */
    int max_version;             /* 0: no maximum */
    uint64_t options;            /* SSL_OP_* (ssl.SSLContext.options) */
    uint64_t verify_flags;       /* X509_V_FLAG_* (ssl.SSLContext.verify_flags) */
    const uint8_t *alpn;         /* ALPN protocols, wire format; NULL: none */
    size_t alpn_len;
} echo_tls_client_config;

/* Why a TLS client call failed with -EBADMSG (echo_client_tls_error()). */
typedef struct echo_tls_error {
    char library[32];   /* "SSL", "X509"...: OpenSSL's library ("" if none) */
    char reason[160];   /* OpenSSL's reason, e.g. "certificate verify failed" */
    char verify[160];   /* the certificate check's message, if that failed */
    long verify_code;   /* X509_V_OK (0), or the X509_V_ERR_* that failed */
    int eof;            /* 1: the server closed in the middle of the handshake */
} echo_tls_error;

/*
 * Speak TLS on a connected TCP client, before any send or receive: builds
 * the context (-EINVAL, -ENOENT...: echo_client_tls_error() says why) and
 * starts the handshake, which echo_client_handshake() completes. A server
 * name OpenSSL refuses (too long for SNI) is -EBADMSG, as a TLS failure. A
 * library without OpenSSL fails with -EPROTONOSUPPORT.
 */
int echo_client_start_tls(echo_client *cli, const echo_tls_client_config *tls);
/*
 * Complete the handshake, each wait bounded by the timeout: 0, -ETIMEDOUT,
 * -ECONNRESET..., or -EBADMSG (a TLS failure: echo_client_tls_error()). A
 * signal returns -EINTR; calling it again resumes the handshake. Later
 * calls fail with -EBADMSG too when TLS does (a bad record, an alert).
 */
int echo_client_handshake(echo_client *cli);
/* The last TLS failure; 0, or -EINVAL if there was none. */
int echo_client_tls_error(const echo_client *cli, echo_tls_error *out);
/*
 * Over TLS, the bytes beyond the echo that made echo() return -EPROTO were
 * decrypted and taken (they cannot be left in the socket): up to cap of
 * them into buf; how many. 0 over plain TCP (they wait in the socket).
 */
size_t echo_client_surplus(const echo_client *cli, uint8_t *buf, size_t cap);
/* The negotiated protocol ("TLSv1.3") and ALPN protocol ("" if none). */
int echo_client_tls_info(const echo_client *cli, char *version, size_t vlen, char *alpn,
                         size_t alen);

#if defined(__GNUC__) || defined(__clang__)
#pragma GCC visibility pop
#endif

#endif
