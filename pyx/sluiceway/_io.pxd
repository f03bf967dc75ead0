# Declarations of csrc/sw_io.h (the socket calls of the engine's own I/O).
from posix.uio cimport iovec


cdef extern from "sw_io.h" nogil:
    enum:
        SW_IO_IN
        SW_IO_OUT
        SW_IO_ERR
        SW_IO_HUP
    ctypedef struct sw_ready_t:
        void *obj
        unsigned events
    int sw_io_open()
    int sw_io_add(int epfd, int fd, unsigned events, void *obj)
    int sw_io_mod(int epfd, int fd, unsigned events, void *obj)
    int sw_io_del(int epfd, int fd)
    int sw_io_ready(int epfd, sw_ready_t *out, int max)
    ctypedef union sw_peer_t:
        unsigned short family
    int sw_io_accept(int lfd, sw_peer_t *peer)
    int sw_io_peer_text(const sw_peer_t *peer, char *host, size_t hostlen, int *port,
                        unsigned *flowinfo, unsigned *scope_id)
    ssize_t sw_io_recv(int fd, char *buf, size_t len)
    ssize_t sw_io_send(int fd, const char *buf, size_t len)
    ssize_t sw_io_writev(int fd, const iovec *iov, int n)
    int sw_io_soerror(int fd)
    int sw_io_peername(int fd, char *host, size_t hostlen, int *port,
                       unsigned *flowinfo, unsigned *scope_id)
    int sw_io_sockname(int fd, char *host, size_t hostlen, int *port,
                       unsigned *flowinfo, unsigned *scope_id)
    int sw_io_shutdown_wr(int fd)
    int sw_io_close(int fd)
    void sw_mem_trim()
