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

#include <limits.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

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

/* src into dst, cut to fit cap bytes with its NUL (cap > 0). */
static void copy(char *dst, size_t cap, const char *src)
{
    size_t n = src == NULL ? 0 : strlen(src);

    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src == NULL ? "" : src, n);
    dst[n] = '\0';
}

/* The OpenSSL error queue's first reason, then cleared. */
static int fail(char *err, size_t errlen, const char *what, int rc)
{
    unsigned long e = ERR_peek_last_error();
    char reason[200] = "";

    if (e != 0)
        ERR_error_string_n(e, reason, sizeof reason);
    if (err != NULL && errlen > 0) {
        size_t n;

        copy(err, errlen, what);
        n = strlen(err);
        if (reason[0] != '\0' && n + 2 < errlen) {
            memcpy(err + n, ": ", 2);
            copy(err + n + 2, errlen - n - 2, reason);
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

/* A context of method's, with our socket BIO; 0 or -1 (out of memory). */
static int ctx_alloc(const SSL_METHOD *method, tls_ctx **out)
{
    tls_ctx *t = calloc(1, sizeof *t);

    *out = NULL;
    if (t == NULL)
        return -1;
    t->ctx = SSL_CTX_new(method);
    t->bio = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pyecho socket");
    if (t->ctx == NULL || t->bio == NULL || BIO_meth_set_write_ex(t->bio, bio_write) != 1 ||
        BIO_meth_set_read_ex(t->bio, bio_read) != 1 || BIO_meth_set_ctrl(t->bio, bio_ctrl) != 1 ||
        BIO_meth_set_create(t->bio, bio_create) != 1) {
        tls_ctx_free(t);
        return -1;
    }
    *out = t;
    return 0;
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
    if (ctx_alloc(TLS_server_method(), &t) != 0)
        return fail(err, errlen, "cannot set up TLS", -ENOMEM);
    ctx = t->ctx;
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

    BIO_clear_retry_flags(b);
    if (t->out_max > 0 && t->ready && t->out->len >= t->out_max) {
        /* A server making us answer (KeyUpdate) without reading: OpenSSL
         * keeps the record and the caller waits for room, as Python's ssl. */
        *written = 0;
        BIO_set_retry_write(b);
        return 0;
    }
    *written = len; /* all: what the socket does not take is queued */
    if (t->failed)
        return 1;
    if (t->direct && t->out->len == 0 && len > 0) {
        ssize_t n = send(t->fd, data, len, COMPAT_MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                t->failed = 1;
                t->error = errno;
                return 1;
            }
            n = 0;
        }
        data += n;
        len -= (size_t)n;
    }
    if (len > 0 && outbuf_append(t->out, (const uint8_t *)data, len) != 0) {
        t->failed = 1;
        t->error = ENOMEM;
    }
    return 1;
}

/* No more input will come: the end of it, a failed recv(), or (but for a
 * client) a failed send(). */
static int input_over(const tls_conn *t)
{
    return t->eof || t->read_failed || (t->failed && !t->keep_reading);
}

static int bio_read(BIO *b, char *buf, size_t len, size_t *readbytes)
{
    tls_conn *t = BIO_get_data(b);
    ssize_t n;

    BIO_clear_retry_flags(b);
    *readbytes = 0;
    if (input_over(t))
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
    else {
        t->failed = t->read_failed = 1;
        t->error = errno;
    }
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
    t->why = ERR_peek_last_error();
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
    case SSL_ERROR_WANT_WRITE: /* out is full: past out_max */
        if (!input_over(t))
            return 0;
        break;
    case SSL_ERROR_ZERO_RETURN:
        return -1;
    default:
        break;
    }
    t->why = ERR_peek_last_error();
    ERR_clear_error();
    /* A FIN ends input, as over plain TCP (after a failed send too, for a
     * client, which reads the server's last records and then its close). */
    return t->eof && !t->read_failed && (!t->failed || t->keep_reading) ? -1 : -2;
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

/* ---- the client's side ------------------------------------------------------ */

/* Trust the CA certificates of a PEM text; 0 or -1. */
static int load_ca_pem(SSL_CTX *ctx, const char *pem, size_t len)
{
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    BIO *in;
    X509 *cert;
    int loaded = 0;

    if (len > INT_MAX || (in = BIO_new_mem_buf(pem, (int)len)) == NULL)
        return -1;
    while ((cert = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL) {
        int ok = X509_STORE_add_cert(store, cert);

        X509_free(cert);
        if (ok != 1) {
            BIO_free(in);
            return -1;
        }
        loaded++;
    }
    BIO_free(in);
    if (loaded == 0)
        return -1;
    ERR_clear_error(); /* the end of the text, read as an error */
    return 0;
}

/* No password for a key: OpenSSL would ask on the terminal. */
static int no_password(char *buf, int size, int rwflag, void *arg)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)arg;
    return -1;
}

/* Present the certificate chain of a PEM text (the leaf first, as
 * SSL_CTX_use_certificate_chain_file() reads a file) and the key of
 * another, or of the same text; 0, or -1 naming the part that failed. */
static int use_cert_pem(SSL_CTX *ctx, const char *cert, size_t cert_len, const char *key,
                        size_t key_len, const char **what)
{
    BIO *in;
    X509 *x;
    EVP_PKEY *pkey = NULL;
    int ok;

    *what = "cannot load certfile";
    if (cert_len > INT_MAX || key_len > INT_MAX ||
        (in = BIO_new_mem_buf(cert, (int)cert_len)) == NULL)
        return -1;
    x = PEM_read_bio_X509_AUX(in, NULL, no_password, NULL);
    ok = x != NULL && SSL_CTX_use_certificate(ctx, x) == 1 && SSL_CTX_clear_chain_certs(ctx) == 1;
    X509_free(x);
    while (ok && (x = PEM_read_bio_X509(in, NULL, no_password, NULL)) != NULL) {
        ok = SSL_CTX_add0_chain_cert(ctx, x) == 1;
        if (!ok)
            X509_free(x);
    }
    /* The end of the text reads as "no start line": the chain is whole. */
    if (ok && ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE)
        ok = 0;
    if (ok) {
        ERR_clear_error();
        *what = "cannot load keyfile";
        BIO_free(in);
        in = key != NULL ? BIO_new_mem_buf(key, (int)key_len)
                         : BIO_new_mem_buf(cert, (int)cert_len);
        pkey = in != NULL ? PEM_read_bio_PrivateKey(in, NULL, no_password, NULL) : NULL;
        ok = pkey != NULL && SSL_CTX_use_PrivateKey(ctx, pkey) == 1 &&
             SSL_CTX_check_private_key(ctx) == 1;
        EVP_PKEY_free(pkey);
    }
    BIO_free(in);
    return ok ? 0 : -1;
}

int tls_client_ctx_new(const echo_tls_client_config *cfg, tls_ctx **out, char *err,
                       size_t errlen)
{
    tls_ctx *t;
    SSL_CTX *ctx;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (cfg == NULL || out == NULL || (cfg->ca_pem == NULL && cfg->ca_pem_len > 0) ||
        (cfg->cert_pem == NULL && (cfg->cert_pem_len > 0 || cfg->key_pem != NULL)) ||
        (cfg->key_pem == NULL && cfg->key_pem_len > 0) || cfg->min_version < 0 ||
        cfg->max_version < 0 || (cfg->check_hostname && !cfg->verify) ||
        cfg->alpn_len > 65535 || (cfg->alpn_len > 0 && cfg->alpn == NULL))
        return -EINVAL;
    if (ctx_alloc(TLS_client_method(), &t) != 0)
        return fail(err, errlen, "cannot set up TLS", -ENOMEM);
    ctx = t->ctx;
    /* What ssl.SSLContext(PROTOCOL_TLS_CLIENT) sets, then the caller's. */
    SSL_CTX_clear_options(ctx, SSL_CTX_get_options(ctx));
    SSL_CTX_set_options(ctx, cfg->options);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
    if (SSL_CTX_set_cipher_list(ctx, cfg->ciphers != NULL ? cfg->ciphers : CIPHERS) != 1 ||
        SSL_CTX_set_min_proto_version(ctx, cfg->min_version) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, cfg->max_version) != 1) {
        tls_ctx_free(t);
        return fail(err, errlen, "cannot set up TLS", -EINVAL);
    }
    X509_VERIFY_PARAM_clear_flags(SSL_CTX_get0_param(ctx), ~0UL);
    X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), (unsigned long)cfg->verify_flags);
    X509_VERIFY_PARAM_set_hostflags(SSL_CTX_get0_param(ctx),
                                    X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
                                        (cfg->check_common_name
                                             ? 0
                                             : X509_CHECK_FLAG_NEVER_CHECK_SUBJECT));
    SSL_CTX_set_verify(ctx, cfg->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (cfg->ca_pem_len > 0 && load_ca_pem(ctx, cfg->ca_pem, cfg->ca_pem_len) != 0) {
        tls_ctx_free(t);
        return fail(err, errlen, "cannot load the CA certificates", -EINVAL);
    }
    if ((cfg->capath != NULL && SSL_CTX_load_verify_locations(ctx, NULL, cfg->capath) != 1) ||
        (cfg->default_paths && SSL_CTX_set_default_verify_paths(ctx) != 1)) {
        tls_ctx_free(t);
        return fail(err, errlen, "cannot load the CA folder", -EINVAL);
    }
    if (cfg->cert_pem != NULL) {
        const char *what;

        if (use_cert_pem(ctx, cfg->cert_pem, cfg->cert_pem_len, cfg->key_pem, cfg->key_pem_len,
                         &what) != 0) {
            tls_ctx_free(t);
            return fail(err, errlen, what, -EINVAL);
        }
    }
    /* 0 on success, unlike the rest of OpenSSL. */
    if (cfg->alpn_len > 0 &&
        SSL_CTX_set_alpn_protos(ctx, cfg->alpn, (unsigned int)cfg->alpn_len) != 0) {
        tls_ctx_free(t);
        return fail(err, errlen, "cannot set the ALPN protocols", -EINVAL);
    }
    *out = t;
    return 0;
}

tls_conn *tls_client_conn_new(tls_ctx *ctx, const echo_tls_client_config *cfg, int fd,
                              outbuf *out)
{
    tls_conn *t = tls_conn_new(ctx, fd, out);
    const char *name = cfg->server_hostname;
    SSL *ssl;
    ASN1_OCTET_STRING *ip;

    if (t == NULL)
        return NULL;
    t->per_turn = 0; /* a blocking client: OpenSSL reads when it needs to */
    t->keep_reading = 1;
    ssl = t->ssl;
    SSL_set_connect_state(ssl);
    if (name != NULL && name[0] != '\0') {
        /* As CPython: an IP address is checked as one and sent as no SNI. */
        ip = a2i_IPADDRESS(name);
        ERR_clear_error();
        if ((ip == NULL && SSL_set_tlsext_host_name(ssl, name) != 1) ||
            (cfg->check_hostname &&
             (ip == NULL ? X509_VERIFY_PARAM_set1_host(SSL_get0_param(ssl), name, 0)
                         : X509_VERIFY_PARAM_set1_ip(SSL_get0_param(ssl),
                                                     ASN1_STRING_get0_data(ip),
                                                     (size_t)ASN1_STRING_length(ip))) != 1)) {
            t->why = ERR_peek_last_error();
            t->failed = 1;
            ERR_clear_error();
        }
        ASN1_OCTET_STRING_free(ip);
    }
    return t;
}

int tls_write(tls_conn *t, const uint8_t *data, size_t len)
{
    size_t written = 0;

    if (len > 0 && SSL_write_ex(t->ssl, data, len, &written) != 1) {
        if (SSL_get_error(t->ssl, 0) == SSL_ERROR_WANT_READ && !t->eof && !t->failed)
            return 0;
        t->why = ERR_peek_last_error();
        ERR_clear_error();
        return -1;
    }
    return t->failed ? -1 : 1;
}

void tls_conn_why(const tls_conn *t, echo_tls_error *out)
{
    long code = SSL_get_verify_result(t->ssl);
    int lib = ERR_GET_LIB(t->why);

    memset(out, 0, sizeof *out);
    if (t->why != 0) {
        copy(out->library, sizeof out->library,
             lib == ERR_LIB_SSL    ? "SSL"
             : lib == ERR_LIB_X509 ? "X509"
             : lib == ERR_LIB_PEM  ? "PEM"
             : lib == ERR_LIB_SYS  ? "SYS"
                                   : ERR_lib_error_string(t->why));
        copy(out->reason, sizeof out->reason, ERR_reason_error_string(t->why));
    }
    /* As CPython: the verification's result only when it is why the
     * handshake failed (it is set, and kept, with verification off too). */
    if (code != X509_V_OK && lib == ERR_LIB_SSL &&
        ERR_GET_REASON(t->why) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        out->verify_code = code;
        copy(out->verify, sizeof out->verify, X509_verify_cert_error_string(code));
    }
    out->eof = t->eof && t->why == 0;
}

int tls_conn_info(const tls_conn *t, char *version, size_t vlen, char *alpn, size_t alen)
{
    const unsigned char *proto = NULL;
    unsigned int len = 0;

    if (vlen == 0 || alen == 0)
        return -1;
    copy(version, vlen, t->ready ? SSL_get_version(t->ssl) : "");
    SSL_get0_alpn_selected(t->ssl, &proto, &len);
    if (len >= alen)
        len = (unsigned int)alen - 1;
    if (len > 0)
        memcpy(alpn, proto, len);
    alpn[len] = '\0';
    return 0;
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

int tls_client_ctx_new(const echo_tls_client_config *cfg, tls_ctx **out, char *err,
                       size_t errlen)
{
    (void)cfg;
    return tls_ctx_new(NULL, out, err, errlen);
}

tls_conn *tls_client_conn_new(tls_ctx *ctx, const echo_tls_client_config *cfg, int fd,
                              outbuf *out)
{
    (void)cfg;
    return tls_conn_new(ctx, fd, out);
}

int tls_write(tls_conn *t, const uint8_t *data, size_t len)
{
    (void)t;
    (void)data;
    (void)len;
    return -1;
}

void tls_conn_why(const tls_conn *t, echo_tls_error *out)
{
    (void)t;
    memset(out, 0, sizeof *out);
}

int tls_conn_info(const tls_conn *t, char *version, size_t vlen, char *alpn, size_t alen)
{
    (void)t;
    (void)version;
    (void)vlen;
    (void)alpn;
    (void)alen;
    return -1;
}

#endif
