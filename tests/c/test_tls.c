/*
 * test_tls.c - csrc/tls.c alone: the context's argument checks and file
 * errors, then a whole handshake, echo and close_notify between an OpenSSL
 * client and a server tls_conn over a socketpair (tls.c's socket BIO), under
 * LeakSanitizer in tools/sanitize.sh; and the client's side against it.
 * Without OpenSSL at build
 * time it checks the refusals instead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "tls.h"

static void test_bad_arguments(void)
{
    echo_tls_config cfg;
    tls_ctx *ctx = NULL;
    char err[256];

    memset(&cfg, 0, sizeof cfg);
    CHECK(tls_ctx_new(NULL, &ctx, err, sizeof err) < 0);
    cfg.certfile = "/nonexistent/cert.pem";
    cfg.keyfile = "/nonexistent/key.pem";
    cfg.min_version = 0x0303;
#ifdef PYECHO_HAVE_OPENSSL
    CHECK(echo_tls_available() == 1);
    cfg.min_version = 0x0301; /* TLS 1.0: refused */
    CHECK_EQ(tls_ctx_new(&cfg, &ctx, err, sizeof err), -EINVAL);
    cfg.min_version = 0x0304;
    cfg.max_version = 0x0303; /* below the minimum */
    CHECK_EQ(tls_ctx_new(&cfg, &ctx, err, sizeof err), -EINVAL);
    cfg.max_version = 0;
    cfg.client_cert = 2; /* required, with no CA file */
    CHECK_EQ(tls_ctx_new(&cfg, &ctx, err, sizeof err), -EINVAL);
    cfg.client_cert = 0;
    CHECK(tls_ctx_new(&cfg, &ctx, err, sizeof err) < 0); /* no such file */
    CHECK(strstr(err, "certfile") != NULL);
    CHECK(ctx == NULL);
#else
    CHECK(echo_tls_available() == 0);
    CHECK_EQ(tls_ctx_new(&cfg, &ctx, err, sizeof err), -EPROTONOSUPPORT);
    CHECK(strstr(err, "without OpenSSL") != NULL);
#endif
}

#ifdef PYECHO_HAVE_OPENSSL

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

/* A self-signed certificate for "localhost" and its key, as PEM files in
 * dir; 0 or -1. */
static int make_cert(const char *cert, const char *key)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;
    X509_EXTENSION *san;
    X509V3_CTX v3;
    FILE *f;
    int ok = pkey != NULL && x != NULL;

    if (ok) {
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
        X509_gmtime_adj(X509_getm_notBefore(x), -3600);
        X509_gmtime_adj(X509_getm_notAfter(x), 3600);
        X509_set_pubkey(x, pkey);
        name = X509_get_subject_name(x);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost",
                                   -1, -1, 0);
        X509_set_issuer_name(x, name);
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost");
        ok = san != NULL && X509_add_ext(x, san, -1) == 1 && X509_sign(x, pkey, EVP_sha256()) > 0;
        X509_EXTENSION_free(san);
    }
    if (ok && (f = fopen(cert, "w")) != NULL) {
        ok = PEM_write_X509(f, x) == 1;
        fclose(f);
    } else {
        ok = 0;
    }
    if (ok && (f = fopen(key, "w")) != NULL) {
        ok = PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL) == 1;
        fclose(f);
    } else {
        ok = 0;
    }
    X509_free(x);
    EVP_PKEY_free(pkey);
    return ok ? 0 : -1;
}

/* Move the handshake on from both sides until both are done. */
static int handshake(SSL *cli, tls_conn *srv)
{
    int done = 0;

    for (int i = 0; i < 100 && !(done && SSL_is_init_finished(cli)); i++) {
        (void)SSL_do_handshake(cli);
        if (!done) {
            int rc;

            srv->read_done = 0; /* a readiness event: one recv() */
            rc = tls_handshake(srv);

            CHECK(rc >= 0);
            if (rc < 0)
                return 0;
            done = rc == 1;
        }
        usleep(1000);
    }
    return done && SSL_is_init_finished(cli);
}

/* Read from srv until n bytes of plaintext came (a few tries). */
static ssize_t read_some(tls_conn *srv, uint8_t *buf, size_t cap)
{
    for (int i = 0; i < 100; i++) {
        ssize_t n;

        srv->read_done = 0; /* a readiness event: one recv() */
        n = tls_read(srv, buf, cap);

        if (n != 0)
            return n;
        usleep(1000);
    }
    return 0;
}

/* ALPN "echo", wire format. */
static const uint8_t ECHO_ALPN[] = "\x04" "echo";

/* A server: a self-signed certificate for "localhost" in a folder of its
 * own, and a context serving it (TLS 1.2 on, ALPN "echo"). */
typedef struct server_fixture {
    char dir[32];
    char cert[64];
    char key[64];
    tls_ctx *ctx;
} server_fixture;

/* 0, or -1 (each failure CHECKed). */
static int server_open(server_fixture *f)
{
    echo_tls_config cfg;
    char err[256];

    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/pyecho-test-tls-XXXXXX");
    CHECK(mkdtemp(f->dir) != NULL);
    snprintf(f->cert, sizeof f->cert, "%s/cert.pem", f->dir);
    snprintf(f->key, sizeof f->key, "%s/key.pem", f->dir);
    CHECK_EQ(make_cert(f->cert, f->key), 0);
    memset(&cfg, 0, sizeof cfg);
    cfg.certfile = f->cert;
    cfg.keyfile = f->key;
    cfg.min_version = 0x0303;
    cfg.alpn = ECHO_ALPN;
    cfg.alpn_len = sizeof ECHO_ALPN - 1;
    CHECK_EQ(tls_ctx_new(&cfg, &f->ctx, err, sizeof err), 0);
    return f->ctx != NULL ? 0 : -1;
}

static void server_close(server_fixture *f)
{
    tls_ctx_free(f->ctx);
    unlink(f->cert);
    unlink(f->key);
    rmdir(f->dir);
}

static void test_handshake_echo_and_close(void)
{
    server_fixture f;
    tls_ctx *ctx;
    tls_conn *srv;
    SSL_CTX *cctx;
    SSL *cli;
    outbuf out = {0};
    uint8_t plain[64];
    const unsigned char *chosen = NULL;
    unsigned int chosen_len = 0;
    int sv[2];

    if (server_open(&f) != 0)
        return;
    ctx = f.ctx;
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    srv = tls_conn_new(ctx, sv[0], &out);
    CHECK(srv != NULL);

    cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_load_verify_locations(cctx, f.cert, NULL);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
    cli = SSL_new(cctx);
    SSL_set_fd(cli, sv[1]);
    SSL_set_connect_state(cli);
    SSL_set1_host(cli, "localhost");
    SSL_set_alpn_protos(cli, ECHO_ALPN, sizeof ECHO_ALPN - 1);

    CHECK(handshake(cli, srv));
    CHECK(srv->ready);
    SSL_get0_alpn_selected(cli, &chosen, &chosen_len);
    CHECK(chosen_len == 4 && memcmp(chosen, "echo", 4) == 0);

    /* The client's data in; the server reads it and seals its echo, sent
     * at once (direct: nothing queued). */
    CHECK_EQ(SSL_write(cli, "hello", 5), 5);
    CHECK_EQ(read_some(srv, plain, sizeof plain), 5);
    CHECK(memcmp(plain, "hello", 5) == 0);
    CHECK_EQ(tls_read(srv, plain, sizeof plain), 0); /* nothing more yet */
    CHECK_EQ(tls_seal(srv, plain, 5), 0);
    CHECK_EQ(out.len, 0);
    memset(plain, 0, sizeof plain);
    for (int i = 0; i < 100 && SSL_read(cli, plain, sizeof plain) <= 0; i++)
        usleep(1000);
    CHECK(memcmp(plain, "hello", 5) == 0);

    /* One recv() per readiness event, reading ahead: two records sent
     * together come in one; until the next event no recv() is made. */
    CHECK_EQ(SSL_write(cli, "one", 3), 3);
    CHECK_EQ(SSL_write(cli, "two", 3), 3);
    srv->read_done = 0;
    CHECK_EQ(tls_read(srv, plain, sizeof plain), 3);
    CHECK(srv->read_done);
    CHECK(tls_pending(srv) > 0); /* the second record, read ahead */
    CHECK_EQ(tls_read(srv, plain + 3, sizeof plain - 3), 3);
    CHECK(memcmp(plain, "onetwo", 6) == 0);
    CHECK_EQ(tls_pending(srv), 0);
    CHECK_EQ(SSL_write(cli, "three", 5), 5);
    CHECK_EQ(tls_read(srv, plain, sizeof plain), 0); /* no event yet: no recv() */
    CHECK_EQ(read_some(srv, plain, sizeof plain), 5);
    CHECK(memcmp(plain, "three", 5) == 0);

    /* Not direct (faults): records wait in the queue. */
    srv->direct = 0;
    CHECK_EQ(tls_seal(srv, (const uint8_t *)"queued", 6), 0);
    CHECK(out.len > 6);
    outbuf_consume(&out, out.len);
    srv->direct = 1;

    /* The client's close_notify is the end of input; ours follows. */
    (void)SSL_shutdown(cli);
    CHECK_EQ(read_some(srv, plain, sizeof plain), -1);
    CHECK_EQ(tls_close_notify(srv), 0);
    CHECK(srv->notified);
    SSL_free(cli);
    SSL_CTX_free(cctx);
    tls_conn_free(srv);
    close(sv[0]);
    close(sv[1]);

    /* A garbage record is a failed handshake, not a hang; a FIN before the
     * handshake's end too. */
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    srv = tls_conn_new(ctx, sv[0], &out);
    CHECK_EQ(write(sv[1], "GET / HTTP/1.1\r\n\r\n", 18), 18);
    CHECK_EQ(tls_handshake(srv), -1);
    tls_conn_free(srv);
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    srv = tls_conn_new(ctx, sv[0], &out);
    CHECK_EQ(tls_handshake(srv), 0); /* nothing yet */
    close(sv[1]);
    srv->read_done = 0;
    CHECK_EQ(tls_handshake(srv), -1);
    CHECK(srv->eof && !srv->failed);
    tls_conn_free(srv);
    close(sv[0]);

    outbuf_free(&out);
    server_close(&f);
}

/* Both handshakes on until both are done (or one fails: -1). */
static int pair_handshake(tls_conn *cli, tls_conn *srv)
{
    int c = 0, s = 0;

    for (int i = 0; i < 200 && !(c == 1 && s == 1); i++) {
        if (c != 1 && (c = tls_handshake(cli)) < 0)
            return -1;
        srv->read_done = 0; /* a readiness event: one recv() */
        if (s != 1 && (s = tls_handshake(srv)) < 0)
            return -1;
        usleep(1000);
    }
    return c == 1 && s == 1 ? 0 : -1;
}

/* A file's first cap bytes; how many (0 if unreadable, CHECKed). */
static size_t slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    size_t n;

    CHECK(f != NULL);
    if (f == NULL)
        return 0;
    n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* A client's settings trusting the fixture's certificate (read into pem,
 * which must outlive cfg) for "localhost". */
static void client_trusting(const server_fixture *fx, char *pem, size_t cap,
                            echo_tls_client_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->server_hostname = "localhost";
    cfg->verify = cfg->check_hostname = 1;
    cfg->ca_pem = pem;
    cfg->ca_pem_len = slurp(fx->cert, pem, cap);
}

/* The client's side: a context from echo_tls_client_config (the CA as PEM
 * text, the name checked), a handshake with the server's side, an echo,
 * then a name the certificate is not for, failing with the verification's
 * reason. */
static void test_client_side(void)
{
    server_fixture fx;
    char err[256], pem[4096], version[32], alpn[16];
    echo_tls_client_config ccfg;
    echo_tls_error why;
    tls_ctx *sctx, *cctx = NULL;
    tls_conn *srv, *cli;
    outbuf sout = {0}, cout = {0};
    uint8_t plain[64];
    size_t pem_len;
    int sv[2];

    if (server_open(&fx) != 0)
        return;
    sctx = fx.ctx;
    client_trusting(&fx, pem, sizeof pem, &ccfg);
    pem_len = ccfg.ca_pem_len;
    ccfg.alpn = ECHO_ALPN;
    ccfg.alpn_len = sizeof ECHO_ALPN - 1;
    ccfg.verify = 0; /* a name checked without verifying: refused */
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), -EINVAL);
    ccfg.verify = 1;
    ccfg.ca_pem_len = 10; /* not a certificate */
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), -EINVAL);
    CHECK(strstr(err, "CA certificates") != NULL);
    ccfg.ca_pem_len = pem_len;
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), 0);
    if (cctx == NULL) {
        server_close(&fx);
        return;
    }

    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    srv = tls_conn_new(sctx, sv[0], &sout);
    cli = tls_client_conn_new(cctx, &ccfg, sv[1], &cout);
    CHECK(srv != NULL && cli != NULL);
    CHECK_EQ(pair_handshake(cli, srv), 0);
    CHECK_EQ(tls_conn_info(cli, version, sizeof version, alpn, sizeof alpn), 0);
    CHECK(strcmp(version, "TLSv1.3") == 0 && strcmp(alpn, "echo") == 0);
    CHECK_EQ(tls_seal(cli, (const uint8_t *)"ping", 4), 0);
    CHECK_EQ(read_some(srv, plain, sizeof plain), 4);
    CHECK_EQ(tls_seal(srv, plain, 4), 0);
    memset(plain, 0, sizeof plain);
    CHECK_EQ(read_some(cli, plain, sizeof plain), 4); /* the tickets first, then it */
    CHECK(memcmp(plain, "ping", 4) == 0);
    tls_conn_free(cli);
    tls_conn_free(srv);
    close(sv[0]);
    close(sv[1]);

    /* Another name: the client refuses, saying why. */
    ccfg.server_hostname = "example.com";
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    srv = tls_conn_new(sctx, sv[0], &sout);
    cli = tls_client_conn_new(cctx, &ccfg, sv[1], &cout);
    CHECK_EQ(pair_handshake(cli, srv), -1);
    tls_conn_why(cli, &why);
    CHECK_EQ(why.verify_code, 62); /* X509_V_ERR_HOSTNAME_MISMATCH */
    CHECK(strcmp(why.library, "SSL") == 0);
    CHECK(strcmp(why.reason, "certificate verify failed") == 0);
    tls_conn_free(cli);
    tls_conn_free(srv);
    close(sv[0]);
    close(sv[1]);

    tls_ctx_free(cctx);
    outbuf_free(&sout);
    outbuf_free(&cout);
    server_close(&fx);
}

/* The client's certificate and key as PEM texts (read by Python when
 * load_cert_chain() is called): apart, together, or failing by part. */
static void test_client_certificate(void)
{
    server_fixture fx;
    char err[256], cert[4096], both[8192];
    echo_tls_client_config ccfg;
    tls_ctx *cctx = NULL;
    size_t cert_len, key_len;

    if (server_open(&fx) != 0)
        return;
    cert_len = slurp(fx.cert, cert, sizeof cert);
    memcpy(both, cert, cert_len);
    key_len = slurp(fx.key, both + cert_len, sizeof both - cert_len);

    memset(&ccfg, 0, sizeof ccfg);
    ccfg.cert_pem = cert;
    ccfg.cert_pem_len = cert_len;
    ccfg.key_pem = both + cert_len;
    ccfg.key_pem_len = key_len;
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), 0); /* apart */
    tls_ctx_free(cctx);
    cctx = NULL;
    ccfg.cert_pem = both;
    ccfg.cert_pem_len = cert_len + key_len;
    ccfg.key_pem = NULL;
    ccfg.key_pem_len = 0;
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), 0); /* together */
    tls_ctx_free(cctx);
    cctx = NULL;
    ccfg.cert_pem_len = cert_len; /* no key */
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), -EINVAL);
    CHECK(strstr(err, "cannot load keyfile") == err);
    ccfg.cert_pem = "not a certificate";
    ccfg.cert_pem_len = strlen(ccfg.cert_pem);
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), -EINVAL);
    CHECK(strstr(err, "cannot load certfile") == err);
    ccfg.cert_pem = NULL; /* a key without a certificate */
    ccfg.cert_pem_len = 0;
    ccfg.key_pem = both + cert_len;
    ccfg.key_pem_len = key_len;
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), -EINVAL);
    CHECK(cctx == NULL);
    server_close(&fx);
}

/* TLS 1.2, the server asks for a renegotiation (HelloRequest): the
 * client's write waits for its answer (tls_write() 0, nothing sealed) and
 * goes once the new handshake is through, as Python's SSLSocket.send(). */
static void test_client_write_during_renegotiation(void)
{
    server_fixture fx;
    char err[256], pem[4096];
    echo_tls_client_config ccfg;
    tls_ctx *cctx = NULL;
    tls_conn *srv, *cli;
    outbuf sout = {0}, cout = {0};
    uint8_t plain[64];
    int sv[2], w = 0, waited = 0;

    if (server_open(&fx) != 0)
        return;
    client_trusting(&fx, pem, sizeof pem, &ccfg);
    ccfg.max_version = 0x0303;
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), 0);
    if (cctx == NULL) {
        server_close(&fx);
        return;
    }
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    srv = tls_conn_new(fx.ctx, sv[0], &sout);
    cli = tls_client_conn_new(cctx, &ccfg, sv[1], &cout);
    CHECK(srv != NULL && cli != NULL);
    CHECK_EQ(pair_handshake(cli, srv), 0);

    CHECK_EQ(SSL_renegotiate((SSL *)srv->ssl), 1);
    CHECK(SSL_do_handshake((SSL *)srv->ssl) == 1); /* its HelloRequest, sent */
    usleep(1000);
    CHECK_EQ(tls_read(cli, plain, sizeof plain), 0); /* taken: it answers */
    for (int i = 0; i < 200 && (w = tls_write(cli, (const uint8_t *)"ping", 4)) == 0; i++) {
        waited = 1;
        srv->read_done = 0; /* a readiness event: one recv() */
        CHECK(tls_read(srv, plain, sizeof plain) >= 0); /* the handshake moves on */
        usleep(1000);
    }
    CHECK(waited);
    CHECK_EQ(w, 1);
    CHECK_EQ(read_some(srv, plain, sizeof plain), 4);
    CHECK(memcmp(plain, "ping", 4) == 0);
    tls_conn_free(cli);
    tls_conn_free(srv);
    close(sv[0]);
    close(sv[1]);
    tls_ctx_free(cctx);
    outbuf_free(&sout);
    outbuf_free(&cout);
    server_close(&fx);
}

/* A TLS 1.3 server that asks for KeyUpdates and never reads: the client's
 * answers queue up to out_max, then tls_read() waits (0) with OpenSSL
 * holding its record; once the server reads and the queue goes out, every
 * KeyUpdate is answered and the connection still echoes. */
static void test_client_answers_are_bounded(void)
{
    enum { UPDATES = 3000, OUT_MAX = 2048, SMALL = 4096 };
    server_fixture fx;
    char err[256], pem[4096];
    echo_tls_client_config ccfg;
    tls_ctx *cctx = NULL;
    tls_conn *srv, *cli;
    outbuf sout = {0}, cout = {0};
    uint8_t plain[64];
    size_t most = 0;
    int sv[2], small = SMALL, held = 0, rounds = 0;

    if (server_open(&fx) != 0)
        return;
    client_trusting(&fx, pem, sizeof pem, &ccfg);
    CHECK_EQ(tls_client_ctx_new(&ccfg, &cctx, err, sizeof err), 0);
    if (cctx == NULL) {
        server_close(&fx);
        return;
    }
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    CHECK_EQ(setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    srv = tls_conn_new(fx.ctx, sv[0], &sout);
    cli = tls_client_conn_new(cctx, &ccfg, sv[1], &cout);
    CHECK(srv != NULL && cli != NULL);
    CHECK_EQ(pair_handshake(cli, srv), 0);
    cli->out_max = OUT_MAX;

    for (int i = 0; i < UPDATES; i++) {
        CHECK_EQ(SSL_key_update((SSL *)srv->ssl, SSL_KEY_UPDATE_REQUESTED), 1);
        CHECK_EQ(SSL_do_handshake((SSL *)srv->ssl), 1); /* sent, or queued in sout */
    }
    /* The server does not read: the client reads until its queue is full. */
    for (int i = 0; i < 10000 && !held; i++) {
        CHECK_EQ(tls_read(cli, plain, sizeof plain), 0);
        most = cout.len > most ? cout.len : most;
        held = cout.len >= OUT_MAX;
    }
    CHECK(held);
    CHECK_EQ(tls_read(cli, plain, sizeof plain), 0); /* still waiting: no growth */
    CHECK(cout.len <= OUT_MAX + 64);                 /* one record past, at most */
    /* The server reads; the client's queue goes out; all are answered:
     * rounds until three in a row move nothing. */
    for (int idle = 0; idle < 3 && rounds < 20000; rounds++) {
        ssize_t n;
        int moved = tls_read(cli, plain, sizeof plain) != 0;

        most = cout.len > most ? cout.len : most;
        n = cout.len > 0 ? send(sv[1], outbuf_begin(&cout), cout.len, MSG_DONTWAIT) : 0;
        if (n > 0) {
            outbuf_consume(&cout, (size_t)n);
            moved = 1;
        }
        srv->read_done = 0;
        CHECK(tls_read(srv, plain, sizeof plain) >= 0);
        n = sout.len > 0 ? send(sv[0], outbuf_begin(&sout), sout.len, MSG_DONTWAIT) : 0;
        if (n > 0) {
            outbuf_consume(&sout, (size_t)n);
            moved = 1;
        }
        idle = moved ? 0 : idle + 1;
    }
    CHECK(rounds < 20000);
    CHECK_EQ(sout.len + cout.len + tls_pending(cli), 0);
    CHECK(most <= OUT_MAX + 64);
    CHECK_EQ(tls_write(cli, (const uint8_t *)"ping", 4), 1);
    CHECK_EQ(cout.len, 0); /* sent at once: nothing is queued */
    CHECK_EQ(read_some(srv, plain, sizeof plain), 4);
    CHECK(memcmp(plain, "ping", 4) == 0);
    tls_conn_free(cli);
    tls_conn_free(srv);
    close(sv[0]);
    close(sv[1]);
    tls_ctx_free(cctx);
    outbuf_free(&sout);
    outbuf_free(&cout);
    server_close(&fx);
}

#endif

int main(void)
{
    RUN(test_bad_arguments);
#ifdef PYECHO_HAVE_OPENSSL
    RUN(test_handshake_echo_and_close);
    RUN(test_client_side);
    RUN(test_client_certificate);
    RUN(test_client_write_during_renegotiation);
    RUN(test_client_answers_are_bounded);
#endif
    return check_summary("tls");
}
