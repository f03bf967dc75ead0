/* sw_io.h: the socket calls of the engine's own connection I/O, in plain C.
 *
 * The engine (pyx/sluiceway/_engine.pyx, class _Conn) watches its
 * connections with one epoll set per event loop and moves bytes with these
 * calls. Each returns what the system call returned, with -errno instead of
 * -1, so the caller needs no errno access:
 *   > = 0  success (bytes moved, or a new descriptor);
 *   < 0    -errno (-EAGAIN: try again when the descriptor is ready).
 * No function blocks: every descriptor is non-blocking.
 */
#ifndef SW_IO_H
#define SW_IO_H

#include <stddef.h>
#include <netinet/in.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Readiness bits, as epoll reports them. */
#define SW_IO_IN   0x001u
#define SW_IO_OUT  0x004u
#define SW_IO_ERR  0x008u
#define SW_IO_HUP  0x010u

/* One ready descriptor: the object registered with it and its bits. */
typedef struct {
    void *obj;
    unsigned events;
} sw_ready_t;

/* A new epoll set (close-on-exec), or -errno. */
int sw_io_open(void);

/* Watch `fd` for `events` (SW_IO_IN and/or SW_IO_OUT; errors and hang-ups
 * are always reported), reporting `obj` with it. `sw_io_mod` changes the
 * bits; `sw_io_del` stops watching. 0 or -errno. */
int sw_io_add(int epfd, int fd, unsigned events, void *obj);
int sw_io_mod(int epfd, int fd, unsigned events, void *obj);
int sw_io_del(int epfd, int fd);

/* Ready descriptors, without waiting: at most `max` into `out`. */
int sw_io_ready(int epfd, sw_ready_t *out, int max);

/* A TCP peer's address as accept() gave it (32 bytes, kept per client
 * connection so that its address costs no getpeername() and can still be
 * told after the descriptor is closed). `family` is AF_INET or AF_INET6;
 * 0 when the peer was neither (a Unix socket): ask sw_io_peername then. */
typedef union {
    sa_family_t family;
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} sw_peer_t;

/* Accept one connection (non-blocking, close-on-exec; TCP_NODELAY set on
 * TCP sockets): a descriptor or -errno (-EAGAIN: none waiting). The peer's
 * address goes into `*peer`. */
int sw_io_accept(int lfd, sw_peer_t *peer);

/* The address in `*peer`, written as sw_io_peername writes it: the family,
 * or 0 when `peer->family` is 0. */
int sw_io_peer_text(const sw_peer_t *peer, char *host, size_t hostlen, int *port,
                    unsigned *flowinfo, unsigned *scope_id);

/* recv(), send() without SIGPIPE, writev() without SIGPIPE. */
ssize_t sw_io_recv(int fd, char *buf, size_t len);
ssize_t sw_io_send(int fd, const char *buf, size_t len);
ssize_t sw_io_writev(int fd, const struct iovec *iov, int n);

/* The error pending on a socket (SO_ERROR): 0 or a positive errno. */
int sw_io_soerror(int fd);

/* The peer's address of `fd`. Returns the family (AF_INET, AF_INET6,
 * AF_UNIX) or -errno; writes the numeric host (or the Unix path, possibly
 * empty) as a NUL-terminated string into `host` (at least 108 bytes), the
 * port into `*port`, and for IPv6 the flow info and scope id. */
int sw_io_peername(int fd, char *host, size_t hostlen, int *port,
                   unsigned *flowinfo, unsigned *scope_id);

/* The socket's own address, as sw_io_peername writes it. */
int sw_io_sockname(int fd, char *host, size_t hostlen, int *port,
                   unsigned *flowinfo, unsigned *scope_id);

/* Half-close: shutdown(SHUT_WR), so the peer reads EOF after what was
 * sent while we go on reading (a lingering close). 0 or -errno. */
int sw_io_shutdown_wr(int fd);

int sw_io_close(int fd);

/* Give memory the allocator holds free back to the system (glibc's
 * malloc_trim; nothing elsewhere). Call it after many connections went
 * away, not per request: it walks the heap. */
void sw_mem_trim(void);

#ifdef __cplusplus
}
#endif

#endif /* SW_IO_H */
