/*
 * framing.c - what the server echoes for the bytes it received, as pure
 * functions. docs/PROTOCOL.md is the prose version; pyecho/_framing.py is
 * the Python twin and the two are fuzzed against each other.
 */
#include <errno.h>
#include <string.h>

#include "pyecho.h"

void echo_config_default(echo_config *cfg)
{
    static const uint8_t exit_word[] = {'e', 'x', 'i', 't'};

    memset(cfg, 0, sizeof *cfg);
    cfg->mode = ECHO_MODE_SEED;
    cfg->quit_word = exit_word;
    cfg->quit_len = sizeof exit_word;
    cfg->bufsize = 99;
    cfg->max_line = 64 * 1024;
    cfg->max_pending = 256 * 1024;
    cfg->backlog = 128;
    cfg->udp_guard = 1;
    cfg->udp_rate = 1000000;
    cfg->udp_rate_per_source = 250000;
    cfg->udp_loop_limit = 4000;
}

/* Upper bounds keep buffers sane and every size computation far from overflow;
 * pyecho/_config.py checks the same ones. */
#define MAX_BUFSIZE ((size_t)1 << 20)
#define MAX_LINE ((size_t)1 << 24)
#define MAX_PENDING ((size_t)1 << 30)
#define MAX_UDP_RATE 1000000000u
#define MAX_LOOP_LIMIT 1000000000u
#define MAX_CLIENTS (1u << 31)
#define MAX_IDLE_MS 4000000000u

int echo_config_check(const echo_config *cfg)
{
    if (cfg == NULL)
        return -EINVAL;
    if (cfg->transport != ECHO_TCP && cfg->transport != ECHO_UDP)
        return -EINVAL;
    if (cfg->mode < ECHO_MODE_RAW || cfg->mode > ECHO_MODE_SEED)
        return -EINVAL;
    if (cfg->quit_word == NULL ? cfg->quit_len != 0
                               : (cfg->quit_len == 0 || cfg->quit_len > 255))
        return -EINVAL;
    if (cfg->bufsize == 0 || cfg->bufsize > MAX_BUFSIZE)
        return -EINVAL;
    if (cfg->max_line == 0 || cfg->max_line > MAX_LINE)
        return -EINVAL;
    if (cfg->max_pending == 0 || cfg->max_pending > MAX_PENDING)
        return -EINVAL;
    if (cfg->backlog < 1 || cfg->backlog > 65535)
        return -EINVAL;
    if (cfg->max_clients > MAX_CLIENTS || cfg->idle_timeout_ms > MAX_IDLE_MS)
        return -EINVAL;
    if (cfg->udp_guard != 0 && cfg->udp_guard != 1)
        return -EINVAL;
    if (cfg->udp_rate > MAX_UDP_RATE || cfg->udp_rate_per_source > MAX_UDP_RATE)
        return -EINVAL;
    if (cfg->udp_loop_limit > MAX_LOOP_LIMIT)
        return -EINVAL;
    return 0;
}

/* Is msg exactly the quit word? */
static int is_quit(const echo_config *cfg, const uint8_t *msg, size_t len)
{
    return cfg->quit_word != NULL && len == cfg->quit_len &&
           memcmp(msg, cfg->quit_word, len) == 0;
}

/* A whole line (terminator included): the quit word before "\n" or "\r\n"? */
static int is_quit_line(const echo_config *cfg, const uint8_t *line, size_t len)
{
    size_t body = len - 1;

    if (body > 0 && line[body - 1] == '\r')
        body--;
    return is_quit(cfg, line, body);
}

/* Seed mode: the whole read is one message, minus one trailing newline. */
static size_t scan_seed(const echo_config *cfg, const uint8_t *buf, size_t len,
                        int *quit)
{
    size_t msg = len;

    if (msg > 0 && buf[msg - 1] == '\n')
        msg--;
    if (is_quit(cfg, buf, msg)) {
        *quit = 1;
        return 0;
    }
    return msg;
}

/*
 * Line mode: whole lines of at most max_line bytes (terminator included) are
 * echoed as they complete; a longer line goes out in max_line pieces, and its
 * tail is never taken for the quit word.
 */
static size_t scan_lines(const echo_config *cfg, int *cont, const uint8_t *buf,
                         size_t len, int *quit)
{
    size_t pos = 0;

    while (pos < len) {
        size_t window = len - pos;
        const uint8_t *nl;

        if (window > cfg->max_line)
            window = cfg->max_line;
        nl = memchr(buf + pos, '\n', window);
        if (nl != NULL) {
            size_t line = (size_t)(nl - (buf + pos)) + 1;

            if (!*cont && is_quit_line(cfg, buf + pos, line)) {
                *quit = 1;
                return pos;
            }
            *cont = 0;
            pos += line;
        } else if (window == cfg->max_line) {
            *cont = 1; /* a full piece of a long line */
            pos += window;
        } else {
            break; /* a partial line: wait for more */
        }
    }
    return pos;
}

size_t echo_scan(const echo_config *cfg, int *cont, const uint8_t *buf,
                 size_t len, int *quit)
{
    *quit = 0;
    switch (cfg->mode) {
    case ECHO_MODE_LINE:
        return scan_lines(cfg, cont, buf, len, quit);
    case ECHO_MODE_SEED:
        return scan_seed(cfg, buf, len, quit);
    default:
        return len;
    }
}
