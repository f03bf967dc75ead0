# Declarations of csrc/sw_sbrk.h (circuit breakers in shared memory) used by
# sluiceway._limits.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from sluiceway._shm cimport sw_shm_hdr


cdef extern from "sw_sbrk.h" nogil:
    enum:
        SW_BRK_CLOSED
        SW_BRK_OPEN
        SW_BRK_HALF_OPEN
        SW_BRK_EV_NONE
        SW_BRK_EV_TRIP_CONSECUTIVE
        SW_BRK_EV_TRIP_RATE
        SW_BRK_EV_COOLED
        SW_BRK_EV_PROBE_OK
        SW_BRK_EV_PROBE_FAILED
        SW_BRK_EV_RESET
        SW_BRK_ADMIT
        SW_BRK_PROBE
        SW_BRK_REFUSE_OPEN
        SW_BRK_REFUSE_BUSY

    ctypedef struct sw_sbrk_entry:
        pass

    ctypedef struct sw_sbrk_conf:
        int64_t failures
        double error_rate
        int64_t min_requests
        int64_t cooldown_us
        int64_t probes
        int64_t window_ns

    ctypedef struct sw_sbrk:
        uint32_t capacity

    size_t sw_sbrk_size(uint32_t capacity)
    void sw_sbrk_attach(sw_sbrk *b, sw_shm_hdr *hdr, const sw_sbrk_conf *conf)
    sw_sbrk_entry *sw_sbrk_find(sw_sbrk *b, uint64_t h, int claim)
    int sw_sbrk_admit(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, uint64_t *gen,
                      int64_t *retry_us, int *event)
    int sw_sbrk_record(sw_sbrk *b, sw_sbrk_entry *e, int ok, uint64_t gen, int probe,
                       int64_t now_ns, int64_t *detail, double *total, double *failed)
    int sw_sbrk_reset(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, int *frm)
    int sw_sbrk_state(const sw_sbrk_entry *e)
    void sw_sbrk_stats(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, int64_t *consecutive,
                       double *total, double *failed)
