/*
 * sw_load.h - one backend's load: its requests in flight, as the proxy
 * counts them (plain C, header only).
 *
 * A load balancer owns one cell per backend (a Python object of
 * sluiceway._lb wraps it) and lends it to the HttpPeers made for that
 * backend.  The proxy engine adds 1 when a request starts on the peer (it
 * is about to take a connection for it) and takes 1 away exactly once when
 * that request is over (answered, failed, cut by the client, or moved to
 * another peer by a retry); the least-connections and power-of-two-choices
 * algorithms of sw_lb.h read the cells.  Nothing here is atomic: a cell is
 * used by the one thread that runs its balancer's event loop.
 *
 * The cell reaches the engine (another extension module) as a PyCapsule
 * named SW_LOAD_CAPSULE whose pointer is the sw_load; the Python object
 * that owns the cell must be kept alive by whoever keeps the pointer.
 */
#ifndef SW_LOAD_H
#define SW_LOAD_H

#include <stdint.h>

#define SW_LOAD_CAPSULE "sluiceway._lb.sw_load"

typedef struct sw_load {
    int64_t inflight;     /* requests in flight; never negative in a correct count */
} sw_load;

/* A request starts on / leaves the backend of `l`. */
static inline void sw_load_up(sw_load *l) { l->inflight++; }
static inline void sw_load_down(sw_load *l) { l->inflight--; }

#endif /* SW_LOAD_H */
