/*
 * abi.c - what the library was built from, for the loader to check
 * (pyecho/_native.py): a stale or foreign build is refused, not misread.
 */
#include <string.h>

#include "pyecho.h"

int echo_abi_version(void)
{
    return ECHO_ABI_VERSION;
}

size_t echo_abi_sizeof(const char *name)
{
    static const struct {
        const char *name;
        size_t size;
    } sizes[] = {
        {"echo_config", sizeof(echo_config)},
        {"echo_stats", sizeof(echo_stats)},
        {"echo_event", sizeof(echo_event)},
        {"echo_faults", sizeof(echo_faults)},
        {"echo_tls_config", sizeof(echo_tls_config)},
        {"echo_tls_client_config", sizeof(echo_tls_client_config)},
        {"echo_tls_error", sizeof(echo_tls_error)},
    };

    if (name == NULL)
        return 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (strcmp(sizes[i].name, name) == 0)
            return sizes[i].size;
    }
    return 0;
}
