/* sw_io.c: see sw_io.h. */
#define _GNU_SOURCE
#include "sw_io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

_Static_assert(SW_IO_IN == EPOLLIN && SW_IO_OUT == EPOLLOUT && SW_IO_ERR == EPOLLERR &&
               SW_IO_HUP == EPOLLHUP, "SW_IO_* bits must equal the EPOLL* bits");

int sw_io_open(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int ctl(int epfd, int op, int fd, unsigned events, void *obj)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.ptr = obj;
    return epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0;
}

int sw_io_add(int epfd, int fd, unsigned events, void *obj)
{
    return ctl(epfd, EPOLL_CTL_ADD, fd, events, obj);
}

int sw_io_mod(int epfd, int fd, unsigned events, void *obj)
{
    return ctl(epfd, EPOLL_CTL_MOD, fd, events, obj);
}

int sw_io_del(int epfd, int fd)
{
    return ctl(epfd, EPOLL_CTL_DEL, fd, 0, NULL);
}

int sw_io_ready(int epfd, sw_ready_t *out, int max)
{
    struct epoll_event evs[256];
    int n, i;
    if (max > 256)
        max = 256;
    do {
        n = epoll_wait(epfd, evs, max, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    for (i = 0; i < n; i++) {
        out[i].obj = evs[i].data.ptr;
        out[i].events = evs[i].events;
    }
    return n;
}

_Static_assert(sizeof(sw_peer_t) == sizeof(struct sockaddr_in6),
               "sw_peer_t holds a sockaddr_in6 and nothing more");

int sw_io_accept(int lfd, sw_peer_t *peer)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int one = 1;
    int fd;
    do {
        fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    memset(peer, 0, sizeof *peer);
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        memcpy(peer, &ss, ss.ss_family == AF_INET ? sizeof peer->in4 : sizeof peer->in6);
    }
    return fd;
}

ssize_t sw_io_recv(int fd, char *buf, size_t len)
{
    ssize_t n;
    do {
        n = recv(fd, buf, len, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return n;
}

ssize_t sw_io_send(int fd, const char *buf, size_t len)
{
    ssize_t n;
    do {
        n = send(fd, buf, len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return n;
}

ssize_t sw_io_writev(int fd, const struct iovec *iov, int n)
{
    struct msghdr msg;
    ssize_t r;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)n;
    do {
        r = sendmsg(fd, &msg, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return r;
}

int sw_io_soerror(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

/* The address in `sa` (as sw_io_peername describes); the family, 0 and
 * an empty host for one it does not know. */
static int addr_out(const struct sockaddr *sa, socklen_t len, char *host,
                    size_t hostlen, int *port, unsigned *flowinfo, unsigned *scope_id)
{
    host[0] = '\0';
    *port = 0;
    *flowinfo = *scope_id = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        if (!inet_ntop(AF_INET, &a->sin_addr, host, (socklen_t)hostlen))
            return -errno;
        *port = ntohs(a->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        if (!inet_ntop(AF_INET6, &a->sin6_addr, host, (socklen_t)hostlen))
            return -errno;
        *port = ntohs(a->sin6_port);
        *flowinfo = ntohl(a->sin6_flowinfo);
        *scope_id = a->sin6_scope_id;
    } else if (sa->sa_family == AF_UNIX) {
        const struct sockaddr_un *a = (const struct sockaddr_un *)sa;
        size_t n = len > offsetof(struct sockaddr_un, sun_path)
                   ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (n >= hostlen)
            n = hostlen - 1;
        memcpy(host, a->sun_path, n);
        host[n] = '\0';
        if (n > 0 && a->sun_path[0] == '\0')
            host[0] = '\0';  /* abstract socket: report no path */
    }
    return sa->sa_family;
}

int sw_io_peername(int fd, char *host, size_t hostlen, int *port,
                   unsigned *flowinfo, unsigned *scope_id)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    return addr_out((const struct sockaddr *)&ss, len, host, hostlen, port, flowinfo, scope_id);
}

int sw_io_peer_text(const sw_peer_t *peer, char *host, size_t hostlen, int *port,
                    unsigned *flowinfo, unsigned *scope_id)
{
    return addr_out(&peer->sa, sizeof *peer, host, hostlen, port, flowinfo, scope_id);
}

int sw_io_sockname(int fd, char *host, size_t hostlen, int *port,
                   unsigned *flowinfo, unsigned *scope_id)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    return addr_out((const struct sockaddr *)&ss, len, host, hostlen, port, flowinfo, scope_id);
}

int sw_io_shutdown_wr(int fd)
{
    return shutdown(fd, SHUT_WR) < 0 ? -errno : 0;
}

void sw_mem_trim(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

int sw_io_close(int fd)
{
    /* Linux always releases the descriptor, even on EINTR: never retry. */
    return close(fd) < 0 ? -errno : 0;
}
