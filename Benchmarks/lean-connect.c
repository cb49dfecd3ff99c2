/*
 * lean-connect: the reference load generator for custody-bench's connect mode (issue 17).
 *
 * One thread (or THREADS threads, each with its own share of the slots), one epoll set per
 * thread, bare non-blocking sockets and hand-made packets: as little as a generator can do per
 * MQTT connect cycle. Each of --conns slots loops: TCP connect, CONNECT
 * (clean start, a fresh session name, a user name shared by groups of five slots), CONNACK,
 * DISCONNECT, wait for the broker to close, close. It exists to tell how fast a broker can be
 * driven on this machine, so that custody-bench can be judged against it (it must reach 90%
 * of this rate against the same broker); it is not the benchmark itself.
 *
 *   gcc -O2 -o lean-connect Benchmarks/lean-connect.c
 *   gcc -O2 -pthread -o lean-connect Benchmarks/lean-connect.c
 *   lean-connect PORT CONNS SECONDS [PROTO [THREADS]]   (PROTO 5, default, or 4; THREADS 1-16, default 1)
 *
 * Prints: lean-connect: cycles=N ok=N errors=E rate=R/s p50=Xus p99=Yus
 *         bench_cpu_us_per_cycle=G bench_cpu_pct=P [bench_threads=T bench_busiest_thread_pct=B]
 * (bench_cpu_pct: all threads together, in % of one core.)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum phase { CONNECTING, AWAIT_CONNACK, AWAIT_CLOSE };

struct slot {
    int fd;
    enum phase phase;
    uint64_t started;
};

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static double cpu_us(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + u.ru_utime.tv_usec + u.ru_stime.tv_usec;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static struct sockaddr_in target;
static int proto = 5;
static double seconds;
static char prefix[16];

/* One generator thread: its own epoll set, slots, session names and latencies. */
struct worker {
    pthread_t thread;
    int id, conns, epfd;
    unsigned long long session_counter, ok, errors;
    struct slot *slots;
    uint64_t *latencies;
    size_t count, capacity;
    double thread_cpu_us, elapsed_s;
};

static double thread_cpu_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Encodes CONNECT for slot `index` of worker `w` into `out`; returns its length. */
static size_t connect_packet(struct worker *w, unsigned char *out, int index) {
    char client[64], user[32];
    int client_len = snprintf(client, sizeof client, "%st%d-%llu", prefix, w->id, w->session_counter++);
    int user_len = snprintf(user, sizeof user, "%st%d-u%d", prefix, w->id, index / 5);
    unsigned char body[160];
    size_t n = 0;
    body[n++] = 0; body[n++] = 4; memcpy(body + n, "MQTT", 4); n += 4;
    body[n++] = (unsigned char)proto;
    body[n++] = 0x80 | 0x02;            /* user name, clean start */
    body[n++] = 0; body[n++] = 60;      /* keep alive */
    if (proto == 5) body[n++] = 0;      /* no properties */
    body[n++] = (unsigned char)(client_len >> 8); body[n++] = (unsigned char)client_len;
    memcpy(body + n, client, client_len); n += client_len;
    body[n++] = (unsigned char)(user_len >> 8); body[n++] = (unsigned char)user_len;
    memcpy(body + n, user, user_len); n += user_len;
    out[0] = 0x10;
    out[1] = (unsigned char)n;          /* under 128 bytes: one length byte */
    memcpy(out + 2, body, n);
    return n + 2;
}

static void start(struct worker *w, struct slot *s, int index) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) { perror("socket"); exit(1); }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->phase = CONNECTING;
    s->started = now_ns();
    if (connect(s->fd, (struct sockaddr *)&target, sizeof target) != 0 && errno != EINPROGRESS) {
        perror("connect"); exit(1);
    }
    struct epoll_event e = { .events = EPOLLOUT, .data.u32 = (uint32_t)index };
    epoll_ctl(w->epfd, EPOLL_CTL_ADD, s->fd, &e);
}

static void *run_worker(void *argument) {
    struct worker *w = argument;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->capacity = 1 << 18;
    w->latencies = malloc(w->capacity * sizeof *w->latencies);
    w->slots = calloc((size_t)w->conns, sizeof *w->slots);
    for (int i = 0; i < w->conns; i++) start(w, &w->slots[i], i);

    uint64_t begin = now_ns(), end = begin + (uint64_t)(seconds * 1e9);
    double cpu_begin = thread_cpu_us();
    int open = w->conns;
    struct epoll_event events[256];
    unsigned char buffer[512];
    while (open > 0) {
        int ready = epoll_wait(w->epfd, events, 256, 100);
        uint64_t now = now_ns();
        for (int k = 0; k < ready; k++) {
            int index = (int)events[k].data.u32;
            struct slot *s = &w->slots[index];
            int finished = 0, failed = 0;
            if (s->phase == CONNECTING) {
                int error = 0;
                socklen_t length = sizeof error;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &error, &length);
                if (error != 0) {
                    failed = 1;
                } else {
                    size_t n = connect_packet(w, buffer, index);
                    if (send(s->fd, buffer, n, MSG_NOSIGNAL) != (ssize_t)n) failed = 1;
                    s->phase = AWAIT_CONNACK;
                    struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)index };
                    epoll_ctl(w->epfd, EPOLL_CTL_MOD, s->fd, &e);
                }
            } else {
                ssize_t n = read(s->fd, buffer, sizeof buffer);
                if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (s->phase == AWAIT_CONNACK) {
                    /* CONNACK: 0x20, length, flags, return/reason code (one read: it is tiny). */
                    if (n >= 4 && buffer[0] == 0x20 && buffer[3] == 0) {
                        if (w->count == w->capacity) {
                            w->capacity *= 2;
                            w->latencies = realloc(w->latencies, w->capacity * sizeof *w->latencies);
                        }
                        w->latencies[w->count++] = now - s->started;
                        static const unsigned char disconnect[2] = { 0xE0, 0x00 };
                        if (send(s->fd, disconnect, 2, MSG_NOSIGNAL) != 2) failed = 1;
                        s->phase = AWAIT_CLOSE;
                    } else {
                        failed = 1;
                    }
                } else if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                    finished = 1;
                }
            }
            if (failed || finished) {
                close(s->fd);
                if (failed) w->errors++; else w->ok++;
                if (now < end) start(w, s, index); else open--;
            }
        }
    }
    w->thread_cpu_us = thread_cpu_us() - cpu_begin;
    w->elapsed_s = (now_ns() - begin) / 1e9;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: lean-connect PORT CONNS SECONDS [PROTO [THREADS]]\n");
        return 2;
    }
    int port = atoi(argv[1]), conns = atoi(argv[2]), threads = 1;
    seconds = atof(argv[3]);
    if (argc > 4) proto = atoi(argv[4]);
    if (argc > 5) threads = atoi(argv[5]);
    if (port <= 0 || port > 65535 || conns <= 0 || conns > 10000 || seconds <= 0 || (proto != 4 && proto != 5)
        || threads < 1 || threads > 16 || threads > conns) {
        fprintf(stderr, "lean-connect: bad PORT, CONNS (1-10000), SECONDS, PROTO (4 or 5) or THREADS (1-16, at most CONNS)\n");
        return 2;
    }
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    snprintf(prefix, sizeof prefix, "lean%ld", (long)(now_ns() % 1000000));

    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    uint64_t begin = now_ns();
    double cpu_begin = cpu_us();
    for (int t = 0; t < threads; t++) {
        workers[t].id = t;
        workers[t].conns = conns / threads + (t < conns % threads ? 1 : 0);
        if (pthread_create(&workers[t].thread, NULL, run_worker, &workers[t]) != 0) { perror("pthread_create"); return 1; }
    }
    unsigned long long ok = 0, errors = 0;
    size_t count = 0;
    double busiest = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(workers[t].thread, NULL);
        ok += workers[t].ok;
        errors += workers[t].errors;
        count += workers[t].count;
        double share = workers[t].thread_cpu_us / 1e4 / (workers[t].elapsed_s > 0 ? workers[t].elapsed_s : 1e-9);
        if (share > busiest) busiest = share;
    }
    double elapsed = (now_ns() - begin) / 1e9, cpu = cpu_us() - cpu_begin;
    uint64_t *latencies = malloc((count ? count : 1) * sizeof *latencies);
    size_t at = 0;
    for (int t = 0; t < threads; t++) {
        memcpy(latencies + at, workers[t].latencies, workers[t].count * sizeof *latencies);
        at += workers[t].count;
    }
    qsort(latencies, count, sizeof *latencies, compare_u64);
    uint64_t p50 = count ? latencies[count / 2] : 0, p99 = count ? latencies[(size_t)(count * 0.99)] : 0;
    printf("lean-connect: cycles=%llu ok=%llu errors=%llu rate=%.1f/s p50=%lluus p99=%lluus "
           "bench_cpu_us_per_cycle=%.1f bench_cpu_pct=%.1f",
           ok + errors, ok, errors, ok / elapsed, (unsigned long long)(p50 / 1000),
           (unsigned long long)(p99 / 1000), cpu / (double)(ok + errors ? ok + errors : 1), cpu / 1e4 / elapsed);
    if (threads > 1) printf(" bench_threads=%d bench_busiest_thread_pct=%.1f", threads, busiest);
    printf("\n");
    return 0;
}
