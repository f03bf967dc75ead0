/* sw_sbrk.h - circuit breakers in memory shared by several processes.
 *
 * Contract
 * --------
 * A table of `capacity` circuits (sw_sbrk_entry) after a sw_shm_hdr of kind
 * SW_SHM_BREAKER.  A circuit is found by the 64-bit hash of its key (open
 * addressing, linear probing); a free entry is claimed with one CAS on its
 * `key`.  Entries are never freed: size the table for the set of upstreams.
 * When it is full, sw_sbrk_find returns NULL and the caller lets requests to
 * that key through untracked.
 *
 * The state machine is the one of the per-process CircuitBreaker
 * (corepy/sluiceway/_limits_common.py, TRANSITIONS); here every transition is
 * one compare-and-swap of the circuit's `word`:
 *
 *     word = state (2 bits) | probes in flight (14 bits) << 2 | gen (48 bits) << 16
 *
 * `gen` grows by one on every transition, so exactly one process wins each
 * transition (and logs it); an outcome reported for an older gen is ignored,
 * as in the per-process breaker.  Times are microseconds since the table's
 * origin (hdr->origin_ns).  The time a circuit opened and the time of its
 * last probe are stamped after the CAS that made them, each tagged with the
 * low 16 bits of the gen they belong to: a reader that finds a stamp of
 * another gen (the winner has not stored it yet) takes "now" instead, which
 * can only delay a probe, never let one through early.
 *
 * Outcomes are counted in window-tagged cells (sw_scount.h): two windows of
 * `window_ns` for totals and failures; consecutive failures in an atomic
 * counter.  A move to CLOSED clears the counts before its CAS (nobody counts
 * while a circuit is not closed), so a closed circuit starts from zero.
 *
 * Memory ordering: relaxed everywhere, as in sw_scount.h.  The one ordering
 * that matters, "the stamp of gen g is read only after seeing gen g", needs
 * none: a stamp is checked by its gen tag, not by the order of the loads.
 *
 * Nothing here allocates, logs, blocks or calls Python; the caller logs the
 * transitions its calls report (SW_BRK_EV_*).
 */
#ifndef SW_SBRK_H
#define SW_SBRK_H

#include <stddef.h>
#include <stdint.h>

#include "sw_shm.h"

#define SW_BRK_CLOSED 0
#define SW_BRK_OPEN 1
#define SW_BRK_HALF_OPEN 2

/* Transitions a call made (0 = none).  The names are TRANSITIONS' events. */
#define SW_BRK_EV_NONE 0
#define SW_BRK_EV_TRIP_CONSECUTIVE 1 /* closed -> open: failures in a row */
#define SW_BRK_EV_TRIP_RATE 2        /* closed -> open: error rate */
#define SW_BRK_EV_COOLED 3           /* open -> half-open */
#define SW_BRK_EV_PROBE_OK 4         /* half-open -> closed */
#define SW_BRK_EV_PROBE_FAILED 5     /* half-open -> open */
#define SW_BRK_EV_RESET 6            /* open or half-open -> closed */

/* sw_sbrk_admit results. */
#define SW_BRK_ADMIT 0       /* closed: go */
#define SW_BRK_PROBE 1       /* half-open: go, as a probe */
#define SW_BRK_REFUSE_OPEN 2 /* open: *retry_us until the cool-down ends */
#define SW_BRK_REFUSE_BUSY 3 /* half-open, all probe places taken */

typedef struct sw_sbrk_entry {
    uint64_t key;          /* hash | 1; 0 while free */
    uint64_t word;         /* state | probes | gen, see above */
    uint64_t opened;       /* gen tag (16) << 48 | microseconds (48) */
    uint64_t probe_at;     /* gen tag (16) << 48 | microseconds (48) */
    int64_t consecutive;   /* failures in a row while closed */
    uint64_t cells[2][2];  /* window w: cells[w & 1][0] totals, [1] failures */
    uint64_t pad[7];       /* 128 bytes: two cache lines per circuit */
} sw_sbrk_entry;

_Static_assert(sizeof(sw_sbrk_entry) == 128, "an entry is two cache lines");

/* Settings, the same in every process (checked against hdr->params on open). */
typedef struct sw_sbrk_conf {
    int64_t failures;      /* consecutive failures that trip; 0 = off */
    double error_rate;     /* ratio that trips; 0 = off */
    int64_t min_requests;
    int64_t cooldown_us;
    int64_t probes;        /* 1 .. 16383 */
    int64_t window_ns;
} sw_sbrk_conf;

typedef struct sw_sbrk {
    sw_shm_hdr *hdr;
    sw_sbrk_entry *table;
    uint32_t capacity;
    sw_sbrk_conf conf;
} sw_sbrk;

/* Bytes a table of `capacity` circuits needs (header included). */
size_t sw_sbrk_size(uint32_t capacity);

/* Point b at a published region of kind SW_SHM_BREAKER. */
void sw_sbrk_attach(sw_sbrk *b, sw_shm_hdr *hdr, const sw_sbrk_conf *conf);

/* The circuit of key hash h; claims a free entry when `claim`.  NULL when the
 * key has none (and claim is 0, or the table is full). */
sw_sbrk_entry *sw_sbrk_find(sw_sbrk *b, uint64_t h, int claim);

/* Admit a request (SW_BRK_ADMIT/PROBE/REFUSE_*).  *gen is the gen the
 * outcome must be reported with; *retry_us is set when refused; *event is
 * the transition this call made (COOLED, or NONE). */
int sw_sbrk_admit(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, uint64_t *gen,
                  int64_t *retry_us, int *event);

/* Report an outcome; returns the transition this call made (SW_BRK_EV_*).
 * *detail is the consecutive count (TRIP_CONSECUTIVE) and *total, *failed the
 * window counts (TRIP_RATE), for the log line. */
int sw_sbrk_record(sw_sbrk *b, sw_sbrk_entry *e, int ok, uint64_t gen, int probe,
                   int64_t now_ns, int64_t *detail, double *total, double *failed);

/* Close an open or half-open circuit (SW_BRK_EV_RESET, or NONE if closed);
 * *from is the state it was in. */
int sw_sbrk_reset(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, int *from);

/* Read: state, consecutive failures, window totals. */
int sw_sbrk_state(const sw_sbrk_entry *e);
void sw_sbrk_stats(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, int64_t *consecutive,
                   double *total, double *failed);

#endif /* SW_SBRK_H */
