/*
 * test_net.c - unit tests of csrc/net.c's addresses: a numeric host resolves
 * to the address it names, IPv6 scope included, and net_format() writes it
 * back the way it was given (the Python engine writes the same, through the
 * same getnameinfo()); buffers too small are refused, never overrun.
 */
#include <errno.h>
#include <net/if.h>
#include <string.h>

#include "check.h"
#include "net.h"

/* host resolves, and formats back to want (NULL: to host itself). */
static void round_trip(const char *host, const char *want)
{
    net_addr addr;
    socklen_t len = 0;
    char out[NET_HOSTLEN];
    int port = 0;

    CHECK_EQ(net_resolve(host, 4242, &addr, &len), 0);
    CHECK_EQ(len, net_addr_len(&addr));
    CHECK_EQ(net_format(&addr, out, sizeof out, &port), 0);
    CHECK_EQ(port, 4242);
    CHECK(strcmp(out, want != NULL ? want : host) == 0);
    if (strcmp(out, want != NULL ? want : host) != 0)
        fprintf(stderr, "  %s -> %s\n", host, out);
}

static void test_round_trips(void)
{
    char scoped[NET_HOSTLEN];
    unsigned lo = if_nametoindex("lo");

    round_trip("127.0.0.1", NULL);
    round_trip("0.0.0.0", NULL);
    round_trip("::1", NULL);
    round_trip("::", NULL);
    round_trip("::ffff:127.0.0.1", NULL); /* how dual stack shows IPv4 peers */
    round_trip("fe80::1%1", lo == 1 ? "fe80::1%lo" : NULL);
    round_trip("::1%1", NULL); /* not link-local: the scope stays a number */
    if (lo != 0) {             /* by name, for a link-local address */
        round_trip("fe80::1%lo", NULL);
        snprintf(scoped, sizeof scoped, "fe80::1%%%u", lo);
        round_trip(scoped, "fe80::1%lo");
    }
    /* An interface that does not exist: its index, which still resolves. */
    round_trip("fe80::1%4000000000", NULL);
}

static void test_the_longest_fits(void)
{
    /* The longest address, with the longest scope index: 50 characters; an
     * interface name is at most IF_NAMESIZE - 1 = 15, shorter than 10 + 5. */
    const char *longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295";

    CHECK(strlen(longest) + 5 < NET_HOSTLEN);
    round_trip(longest, NULL);
    round_trip("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295", longest);
}

static void test_small_buffers_are_refused(void)
{
    net_addr addr;
    socklen_t len;
    char out[NET_HOSTLEN];
    int port;

    CHECK_EQ(net_resolve("fe80::1%4000000000", 7, &addr, &len), 0);
    memset(out, 'x', sizeof out);
    CHECK_EQ(net_format(&addr, out, 8, &port), -ENOSPC);
    CHECK(out[8] == 'x'); /* nothing written past what it was given */
    CHECK_EQ(net_resolve("127.0.0.1", 7, &addr, &len), 0);
    CHECK_EQ(net_format(&addr, out, 9, &port), -ENOSPC);
    CHECK_EQ(net_format(&addr, out, 10, &port), 0);
}

static void test_bad_hosts(void)
{
    net_addr addr;
    socklen_t len;
    const char *bad[] = {"", "localhost", "[::1]", "127.0.0.1%1", "::1 ", "fe80::1%",
                         "fe80::1%no-such-if0", "1.2.3.4.5"};

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ(net_resolve(bad[i], 7, &addr, &len), -EINVAL);
    CHECK_EQ(net_resolve("::1", 65536, &addr, &len), -EINVAL);
    CHECK_EQ(net_resolve(NULL, 7, &addr, &len), -EINVAL);
}

int main(void)
{
    RUN(test_round_trips);
    RUN(test_the_longest_fits);
    RUN(test_small_buffers_are_refused);
    RUN(test_bad_hosts);
    return check_summary("test_net");
}
