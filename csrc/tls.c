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
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tls.h"

#ifdef PYECHO_HAVE_OPENSSL

#include <openssl/err.h>
#include <openssl/ssl.h>

/* CPython's PY_SSL_DEFAULT_CIPHER_STRING (Modules/_ssl.c, 3.10 on). */
#define CIPHERS "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
#define TAKE_CHUNK 16384

struct tls_ctx {
    SSL_CTX *ctx;
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
    if (ctx == NULL) {
        free(t);
        return fail(err, errlen, "SSL_CTX_new", -ENOMEM);
    }
    SSL_CTX_clear_options(ctx, SSL_CTX_get_options(ctx));
    SSL_CTX_set_options(ctx, SSL_OP_ALL | SSL_OP_NO_SSLv3 | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_ENABLE_MIDDLEBOX_COMPAT);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
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
    free(t);
}

tls_conn *tls_conn_new(tls_ctx *ctx)
{
    tls_conn *t = calloc(1, sizeof *t);
    SSL *ssl;
    BIO *rbio, *wbio;

    if (t == NULL)
        return NULL;
    ssl = SSL_new(ctx->ctx);
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    if (ssl == NULL || rbio == NULL || wbio == NULL) {
        SSL_free(ssl);
        BIO_free(rbio);
        BIO_free(wbio);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty memory BIO means "no more yet", not end of file. */
    BIO_set_mem_eof_return(rbio, -1);
    BIO_set_mem_eof_return(wbio, -1);
    SSL_set_bio(ssl, rbio, wbio);
    SSL_set_accept_state(ssl);
    t->ssl = ssl;
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

int tls_feed(tls_conn *t, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    if (len > INT32_MAX || BIO_write(SSL_get_rbio(t->ssl), data, (int)len) != (int)len) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

int tls_handshake(tls_conn *t)
{
    int rc = SSL_do_handshake(t->ssl);

    if (rc == 1) {
        t->ready = 1;
        return 1;
    }
    if (SSL_get_error(t->ssl, rc) == SSL_ERROR_WANT_READ)
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
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        return -1;
    default:
        ERR_clear_error();
        return -2;
    }
}

int tls_take(tls_conn *t, outbuf *out)
{
    BIO *wbio = SSL_get_wbio(t->ssl);
    uint8_t chunk[TAKE_CHUNK];

    while (BIO_ctrl_pending(wbio) > 0) {
        int n = BIO_read(wbio, chunk, sizeof chunk);

        if (n <= 0 || outbuf_append(out, chunk, (size_t)n) != 0)
            return -1;
    }
    return 0;
}

int tls_seal(tls_conn *t, const uint8_t *data, size_t len, outbuf *out)
{
    size_t written = 0;

    if (len > 0 && SSL_write_ex(t->ssl, data, len, &written) != 1) {
        ERR_clear_error();
        return -1;
    }
    return tls_take(t, out);
}

int tls_close_notify(tls_conn *t, outbuf *out)
{
    (void)SSL_shutdown(t->ssl); /* 0: the peer's is not awaited */
    ERR_clear_error();
    t->notified = 1;
    return tls_take(t, out);
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

tls_conn *tls_conn_new(tls_ctx *ctx)
{
    (void)ctx;
    return NULL;
}

void tls_conn_free(tls_conn *t)
{
    (void)t;
}

int tls_feed(tls_conn *t, const uint8_t *data, size_t len)
{
    (void)t;
    (void)data;
    (void)len;
    return -1;
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

int tls_seal(tls_conn *t, const uint8_t *data, size_t len, outbuf *out)
{
    (void)t;
    (void)data;
    (void)len;
    (void)out;
    return -1;
}

int tls_take(tls_conn *t, outbuf *out)
{
    (void)t;
    (void)out;
    return -1;
}

int tls_close_notify(tls_conn *t, outbuf *out)
{
    (void)t;
    (void)out;
    return -1;
}

#endif
