/*
 * fuzz_scan.c - libFuzzer harness for the C framing (csrc/framing.c) alone.
 * fuzz/fuzz_framing.py (atheris) compares it with the Python twin; this one
 * runs at native speed under ASan+UBSan and checks the framing's promises:
 *
 *   - echo_scan never reads or reports past the buffer;
 *   - line mode keeps fewer than max_line bytes pending;
 *   - line framing does not depend on how reads split the stream;
 *   - seed mode echoes the whole read minus at most one newline.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DPYECHO_BUILD_FUZZ=ON, then
 *        ./fuzz_scan -max_total_time=60 fuzz/corpus
 * Input: byte 0 mode (mod 3); byte 1 max_line: 1 + byte % 16, or 65536 for
 * 255; byte 2 quit word (mod 4: "exit", "\r", none, "e"); byte 3 seed of the
 * chunk sizes; the rest is the stream.
 */
#include <stdlib.h>
#include <string.h>

#include "pyecho.h"

/* The input layout fuzz/fuzz_framing.py shares, so one corpus serves both. */
static const uint8_t *const quit_words[] = {(const uint8_t *)"exit",
                                            (const uint8_t *)"\r", NULL,
                                            (const uint8_t *)"e"};
static const size_t quit_lens[] = {4, 1, 0, 1};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    echo_config cfg;
    uint8_t *held;
    const uint8_t *stream;
    size_t len, whole, out = 0, kept = 0, pos = 0;
    unsigned seed;
    int cont = 0, quit = 0, whole_quit;

    if (size < 4)
        return 0;
    echo_config_default(&cfg);
    cfg.mode = data[0] % 3;
    cfg.max_line = data[1] == 255 ? 65536 : 1 + data[1] % 16;
    cfg.quit_word = quit_words[data[2] % 4];
    cfg.quit_len = quit_lens[data[2] % 4];
    seed = data[3];
    stream = data + 4;
    len = size - 4;
    if (echo_config_check(&cfg) != 0)
        abort();

    whole = echo_scan(&cfg, &cont, stream, len, &whole_quit);
    if (whole > len)
        abort();
    if (cfg.mode == ECHO_MODE_RAW && (whole != len || whole_quit))
        abort();
    if (cfg.mode == ECHO_MODE_SEED && !whole_quit &&
        whole != len - (len > 0 && stream[len - 1] == '\n'))
        abort();
    if (cfg.mode != ECHO_MODE_LINE)
        return 0;
    if (!whole_quit && len - whole >= cfg.max_line)
        abort();

    /* The same stream in chunks, held bytes first, as the server reads it. */
    held = malloc(len + 1);
    cont = 0;
    while (pos < len && !quit) {
        size_t n, emit;

        seed = seed * 1103515245u + 12345u;
        n = 1 + (seed >> 16) % 24;
        if (n > len - pos)
            n = len - pos;
        memcpy(held + kept, stream + pos, n);
        pos += n;
        emit = echo_scan(&cfg, &cont, held, kept + n, &quit);
        if (emit > kept + n)
            abort();
        out += emit;
        kept = kept + n - emit;
        memmove(held, held + emit, kept);
        if (!quit && kept >= cfg.max_line)
            abort();
    }
    free(held);
    if (out != whole || quit != whole_quit)
        abort();
    return 0;
}
