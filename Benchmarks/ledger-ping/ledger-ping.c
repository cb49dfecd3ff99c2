/*
 * ledger-ping: the Mosquitto plugin's own round trip on custody's ledger socket, timed with
 * the plugin's link code (Sources/CustodyMosquittoPlugin/ledger_link.c, compiled in): one
 * claim, then authorize requests on its connection (no commit: the socket, the frames and
 * custody's answer), then claim+release pairs (one durable commit each). Built and run by
 * Benchmarks/mosquitto-front.sh:
 *
 *   ledger-ping SOCKET [AUTHORIZATIONS [GAP_US [CLAIMS]]]
 *
 * GAP_US: microseconds slept between authorize requests (0: back to back); with a gap both
 * sides block between requests, as Mosquitto's thread and custody's loop do between CONNECTs.
 * SPIN_US: plugin_opt_spin_us (default the plugin's).
 * Prints one line: ledger-ping: authorize_p50=Xus authorize_p99=Yus authorize_mean=Zus
 * claim_p50=... claim_p99=... cpu_us_per_authorize=C (this process's CPU).
 */
#include "custody_mosquitto.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

/* The plugin logs through Mosquitto; here, to standard error. */
int mosquitto_log_printf(int level, const char *fmt, ...)
{
    (void)level;
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double *sorted, size_t count, double p)
{
    if (count == 0) return 0;
    size_t index = (size_t)(p * (double)(count - 1) + 0.5);
    return sorted[index];
}

/* A claim of `session` for authentication name ledger-ping, clean start, 3.1.1; its connection. */
static int claim(struct custody_link *link, const char *session, uint64_t *connection)
{
    struct custody_buffer *out = &link->out;
    custody_buffer_start(out, CUSTODY_CLAIM, ++link->next_request);
    custody_put_u8(out, 1 | 2); /* clean start, username present */
    custody_put_u8(out, 4);
    custody_put_u32(out, 0);
    custody_put_bytes(out, session, strlen(session));
    custody_put_bytes(out, "ledger-ping", strlen("ledger-ping"));
    custody_put_bytes(out, "127.0.0.1", strlen("127.0.0.1"));
    if (custody_link_call(link, CUSTODY_CLAIM_ANSWER) != 0) return -1;
    uint8_t outcome = custody_get_u8(&link->in);
    if (outcome != 0) {
        fprintf(stderr, "ledger-ping: claim of %s not granted (outcome %u)\n", session, outcome);
        return -1;
    }
    (void)custody_get_u8(&link->in);
    (void)custody_get_u8(&link->in);
    (void)custody_get_u8(&link->in);
    *connection = custody_get_u64(&link->in);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: ledger-ping SOCKET [AUTHORIZATIONS [GAP_US [CLAIMS [SPIN_US]]]]\n");
        return 2;
    }
    long count = argc > 2 ? atol(argv[2]) : 20000;
    long gap = argc > 3 ? atol(argv[3]) : 0;
    long claims = argc > 4 ? atol(argv[4]) : 200;
    int spin = argc > 5 ? atoi(argv[5]) : CUSTODY_DEFAULT_SPIN_US;
    struct custody_link *link = calloc(1, sizeof(*link));
    link->path = argv[1];
    link->descriptor = -1;
    link->timeout_ms = 5000;
    link->spin_us = spin;
    uint64_t held;
    if (claim(link, "ledger-ping-held", &held) != 0) return 1;
    double *times = malloc(sizeof(double) * (size_t)(count > claims ? count : claims));
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    double total = 0;
    for (long i = 0; i < count; i++) {
        if (gap > 0) usleep((useconds_t)gap);
        char topic[32];
        snprintf(topic, sizeof(topic), "bench/%ld", i % 16);
        struct custody_buffer *out = &link->out;
        custody_buffer_start(out, CUSTODY_AUTHORIZE, ++link->next_request);
        custody_put_u64(out, held);
        custody_put_u8(out, 1);
        custody_put_bytes(out, topic, strlen(topic));
        uint64_t started = now_ns();
        if (custody_link_call(link, CUSTODY_AUTHORIZE_ANSWER) != 0) return 1;
        times[i] = (double)(now_ns() - started) / 1000.0;
        total += times[i];
    }
    getrusage(RUSAGE_SELF, &after);
    double cpu = (double)(after.ru_utime.tv_sec - before.ru_utime.tv_sec + after.ru_stime.tv_sec - before.ru_stime.tv_sec) * 1e6 +
                 (double)(after.ru_utime.tv_usec - before.ru_utime.tv_usec + after.ru_stime.tv_usec - before.ru_stime.tv_usec);
    qsort(times, (size_t)count, sizeof(double), compare);
    printf("ledger-ping: gap_us=%ld authorize_p50=%.1fus authorize_p99=%.1fus authorize_mean=%.1fus cpu_us_per_authorize=%.1f",
        gap, percentile(times, (size_t)count, 0.5), percentile(times, (size_t)count, 0.99), total / (double)count,
        cpu / (double)count);
    double claim_total = 0;
    for (long i = 0; i < claims; i++) {
        char session[64];
        snprintf(session, sizeof(session), "ledger-ping-%ld", i);
        uint64_t connection;
        uint64_t started = now_ns();
        if (claim(link, session, &connection) != 0) return 1;
        times[i] = (double)(now_ns() - started) / 1000.0;
        claim_total += times[i];
        struct custody_buffer *out = &link->out;
        custody_buffer_start(out, CUSTODY_RELEASE, ++link->next_request);
        custody_put_u64(out, connection);
        custody_put_u8(out, 1); /* clientInitiatedDisconnect */
        custody_put_u8(out, 0);
        custody_put_u32(out, 0);
        custody_put_bytes(out, session, strlen(session));
        custody_put_bytes(out, "127.0.0.1", strlen("127.0.0.1"));
        if (custody_link_call(link, CUSTODY_RELEASE_ANSWER) != 0) return 1;
    }
    qsort(times, (size_t)claims, sizeof(double), compare);
    printf(" claim_p50=%.1fus claim_p99=%.1fus claim_mean=%.1fus claims=%ld\n", percentile(times, (size_t)claims, 0.5),
        percentile(times, (size_t)claims, 0.99), claims > 0 ? claim_total / (double)claims : 0, claims);
    return 0;
}
