/*
 * tls.c - TLS for the echo server over OpenSSL (tls.h). Built with OpenSSL
 * when CMake finds it (PYECHO_HAVE_OPENSSL); without it, the stubs at the
 * end refuse with -EPROTONOSUPPORT and echo_tls_available() is 0.
 *
 * The context is the one CPython's ssl module builds for
 * ssl.SSLContext(PROTOCOL_TLS_SERVER) (pyecho/_tls.py, server_context()):
 * the same options, ciphers, session id context, verification and ALPN
 * choice, so a client cannot tell the engines apart.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tls.h"

#ifdef PYECHO_HAVE_OPENSSL

#include <sys/socket.h>

#include "compat.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

/* CPython's PY_SSL_DEFAULT_CIPHER_STRING (Modules/_ssl.c, 3.10 on). */
#define CIPHERS "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"

/* OpenSSL's read buffer when reading ahead: 64 KiB of plaintext in full
 * records (16 KiB each, plus at most 5 + 256 bytes). */
#define READ_AHEAD (64 * 1024 + 4 * (5 + 256))

struct tls_ctx {
    SSL_CTX *ctx;
    BIO_METHOD *bio; /* the socket BIO (below) */
    uint8_t alpn[65536];
    size_t alpn_len;
};

int echo_tls_available(void)
{
    return 1;
}

const char *echo_tls_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}

/* The OpenSSL error queue's first reason, then cleared. */
static int fail(char *err, size_t errlen, const char *what, int rc)
{
    unsigned long e = ERR_peek_last_error();
    char reason[200] = "";

    if (e != 0)
        ERR_error_string_n(e, reason, sizeof reason);
    if (err != NULL && errlen > 0) {
        size_t n = strlen(what);

        if (n >= errlen)
            n = errlen - 1;
        memcpy(err, what, n);
        err[n] = '\0';
        if (reason[0] != '\0' && n + 2 < errlen) {
            size_t m = strlen(reason);

            if (m > errlen - n - 3)
                m = errlen - n - 3;
            memcpy(err + n, ": ", 2);
            memcpy(err + n + 2, reason, m);
            err[n + 2 + m] = '\0';
        }
    }
    if (ERR_GET_LIB(e) == ERR_LIB_SYS && ERR_GET_REASON(e) > 0)
        rc = -ERR_GET_REASON(e); /* ENOENT, EACCES... */
    ERR_clear_error();
    return rc;
}

/* The server's choice among the client's ALPN protocols, as CPython makes
 * it: its own order; none in common, no ALPN (not an alert). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    tls_ctx *t = arg;
    unsigned char *chosen = NULL;

    (void)ssl;
    if (SSL_select_next_proto(&chosen, outlen, t->alpn, (unsigned int)t->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

static int bio_write(BIO *b, const char *data, size_t len, size_t *written);
static int bio_read(BIO *b, char *buf, size_t len, size_t *readbytes);
static long bio_ctrl(BIO *b, int cmd, long num, void *ptr);
static int bio_create(BIO *b);

int tls_ctx_new(const echo_tls_config *cfg, tls_ctx **out, char *err, size_t errlen)
{
    tls_ctx *t;
    SSL_CTX *ctx;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (cfg == NULL || out == NULL || cfg->certfile == NULL || cfg->keyfile == NULL ||
        cfg->client_cert < 0 || cfg->client_cert > 2 ||
        (cfg->client_cert != 0 && cfg->cafile == NULL) ||
        (cfg->min_version != TLS1_2_VERSION && cfg->min_version != TLS1_3_VERSION) ||
        (cfg->max_version != 0 && cfg->max_version != TLS1_2_VERSION &&
         cfg->max_version != TLS1_3_VERSION) ||
        (cfg->max_version != 0 && cfg->max_version < cfg->min_version) ||
        cfg->alpn_len > sizeof t->alpn || (cfg->alpn_len > 0 && cfg->alpn == NULL))
        return -EINVAL;
    t = calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    ctx = t->ctx = SSL_CTX_new(TLS_server_method());
    t->bio = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pyecho socket");
    if (ctx == NULL || t->bio == NULL || BIO_meth_set_write_ex(t->bio, bio_write) != 1 ||
        BIO_meth_set_read_ex(t->bio, bio_read) != 1 || BIO_meth_set_ctrl(t->bio, bio_ctrl) != 1 ||
        BIO_meth_set_create(t->bio, bio_create) != 1) {
        tls_ctx_free(t);
        return fail(err, errlen, "cannot set up TLS", -ENOMEM);
    }
    SSL_CTX_clear_options(ctx, SSL_CTX_get_options(ctx));
    SSL_CTX_set_options(ctx, SSL_OP_ALL | SSL_OP_NO_SSLv3 | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_ENABLE_MIDDLEBOX_COMPAT);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
    /* Read ahead: one recv() takes what the socket holds, up to READ_AHEAD
     * bytes, not each record's header and then its body (tls_conn.per_turn). */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, READ_AHEAD);
    if (SSL_CTX_set_cipher_list(ctx, CIPHERS) != 1 ||
        SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"Python", 6) != 1 ||
        SSL_CTX_set_min_proto_version(ctx, cfg->min_version) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, cfg->max_version) != 1) {
        tls_ctx_free(t);
        return fail(err, errlen, "cannot set up TLS", -EINVAL);
    }
    X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_TRUSTED_FIRST);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->certfile) != 1) {
        tls_ctx_free(t);
        return fail(err, errlen, "cannot load certfile", -EINVAL);
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->keyfile, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        tls_ctx_free(t);
        return fail(err, errlen, "cannot load keyfile", -EINVAL);
    }
    if (cfg->client_cert != 0) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->cafile, NULL) != 1) {
            tls_ctx_free(t);
            return fail(err, errlen, "cannot load cafile", -EINVAL);
        }
        SSL_CTX_set_verify(ctx,
                           SSL_VERIFY_PEER |
                               (cfg->client_cert == 2 ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                           NULL);
    }
    if (cfg->alpn_len > 0) {
        memcpy(t->alpn, cfg->alpn, cfg->alpn_len);
        t->alpn_len = cfg->alpn_len;
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, t);
    }
    *out = t;
    return 0;
}

void tls_ctx_free(tls_ctx *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    BIO_meth_free(t->bio);
    free(t);
}

/* ---- the socket BIO ----------------------------------------------------------- */

static int bio_write(BIO *b, const char *data, size_t len, size_t *written)
{
    tls_conn *t = BIO_get_data(b);

    *written = len; /* always all: what the socket does not take is queued */
    if (t->failed)
        return 1;
    if (t->direct && t->out->len == 0 && len > 0) {
        ssize_t n = send(t->fd, data, len, COMPAT_MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                t->failed = 1;
                return 1;
            }
            n = 0;
        }
        data += n;
        len -= (size_t)n;
    }
    if (len > 0 && outbuf_append(t->out, (const uint8_t *)data, len) != 0)
        t->failed = 1;
    return 1;
}

static int bio_read(BIO *b, char *buf, size_t len, size_t *readbytes)
{
    tls_conn *t = BIO_get_data(b);
    ssize_t n;

    BIO_clear_retry_flags(b);
    *readbytes = 0;
    if (t->eof || t->failed)
        return 0;
    if (t->per_turn && t->read_done) {
        BIO_set_retry_read(b);
        return 0;
    }
    n = recv(t->fd, buf, len, 0);
    t->read_done = 1; /* (what is left, the next readiness event says) */
    if (n > 0) {
        *readbytes = (size_t)n;
        return 1;
    }
    if (n == 0)
        t->eof = 1;
    else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        BIO_set_retry_read(b);
    else
        t->failed = 1;
    return 0;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

tls_conn *tls_conn_new(tls_ctx *ctx, int fd, outbuf *out)
{
    tls_conn *t = calloc(1, sizeof *t);
    SSL *ssl;
    BIO *bio;

    if (t == NULL)
        return NULL;
    ssl = SSL_new(ctx->ctx);
    bio = BIO_new(ctx->bio);
    if (ssl == NULL || bio == NULL) {
        SSL_free(ssl);
        BIO_free(bio);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(ssl, bio, bio);
    SSL_set_accept_state(ssl);
    t->ssl = ssl;
    t->fd = fd;
    t->out = out;
    t->direct = 1;
    t->per_turn = 1;
    return t;
}

void tls_conn_free(tls_conn *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl);
    free(t);
    ERR_clear_error();
}

int tls_handshake(tls_conn *t)
{
    int rc = SSL_do_handshake(t->ssl);

    if (rc == 1) {
        t->ready = 1;
        return t->failed ? -1 : 1;
    }
    if (SSL_get_error(t->ssl, rc) == SSL_ERROR_WANT_READ && !t->eof && !t->failed)
        return 0;
    ERR_clear_error();
    return -1;
}

ssize_t tls_read(tls_conn *t, uint8_t *buf, size_t cap)
{
    size_t got = 0;

    if (SSL_read_ex(t->ssl, buf, cap, &got) == 1)
        return (ssize_t)got;
    switch (SSL_get_error(t->ssl, 0)) {
    case SSL_ERROR_WANT_READ:
        if (!t->eof && !t->failed)
            return 0;
        break;
    case SSL_ERROR_ZERO_RETURN:
        return -1;
    default:
        break;
    }
    ERR_clear_error();
    if (t->failed)
        return -2;
    return t->eof ? -1 : -2; /* a FIN ends input, as over plain TCP */
}

size_t tls_pending(const tls_conn *t)
{
    int n = SSL_pending(t->ssl);

    if (n <= 0 && t->per_turn)
        n = SSL_has_pending(t->ssl);
    return n > 0 ? (size_t)n : 0;
}

int tls_take(tls_conn *t)
{
    return t->failed ? -1 : 0;
}

int tls_seal(tls_conn *t, const uint8_t *data, size_t len)
{
    size_t written = 0;

    if (len > 0 && SSL_write_ex(t->ssl, data, len, &written) != 1) {
        ERR_clear_error();
        return -1;
    }
    return tls_take(t);
}

int tls_close_notify(tls_conn *t)
{
    (void)SSL_shutdown(t->ssl); /* 0: the peer's is not awaited */
    ERR_clear_error();
    t->notified = 1;
    return tls_take(t);
}

#else /* no OpenSSL at build time */

int echo_tls_available(void)
{
    return 0;
}

const char *echo_tls_version(void)
{
    return "built without OpenSSL (PYECHO_TLS=OFF, or its headers were not found)";
}

int tls_ctx_new(const echo_tls_config *cfg, tls_ctx **out, char *err, size_t errlen)
{
    (void)cfg;
    (void)out;
    if (err != NULL && errlen > 0) {
        strncpy(err, echo_tls_version(), errlen - 1);
        err[errlen - 1] = '\0';
    }
    return -EPROTONOSUPPORT;
}

void tls_ctx_free(tls_ctx *ctx)
{
    (void)ctx;
}

tls_conn *tls_conn_new(tls_ctx *ctx, int fd, outbuf *out)
{
    (void)ctx;
    (void)fd;
    (void)out;
    return NULL;
}

void tls_conn_free(tls_conn *t)
{
    (void)t;
}

int tls_handshake(tls_conn *t)
{
    (void)t;
    return -1;
}

ssize_t tls_read(tls_conn *t, uint8_t *buf, size_t cap)
{
    (void)t;
    (void)buf;
    (void)cap;
    return -2;
}

size_t tls_pending(const tls_conn *t)
{
    (void)t;
    return 0;
}

int tls_seal(tls_conn *t, const uint8_t *data, size_t len)
{
    (void)t;
    (void)data;
    (void)len;
    return -1;
}

int tls_take(tls_conn *t)
{
    (void)t;
    return -1;
}

int tls_close_notify(tls_conn *t)
{
    (void)t;
    return -1;
}

#endif
