// The Linux headers the epoll transport (Sources/EpollTransport)
// needs and that Swift's Glibc module does not bring: epoll, eventfd, TCP options.
#ifndef CEPOLL_H
#define CEPOLL_H
#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/// accept4 is declared only under _GNU_SOURCE.
int accept4(int sockfd, struct sockaddr *addr, socklen_t *addrlen, int flags);
static inline int cepoll_accept4(int descriptor, struct sockaddr *address, socklen_t *length, int flags) {
    return accept4(descriptor, address, length, flags);
}

/// Names the calling thread (prctl is variadic, which Swift cannot call).
static inline int cepoll_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, name, 0, 0, 0);
}
#endif
#endif
