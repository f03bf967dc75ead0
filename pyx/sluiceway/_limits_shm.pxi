# Shared memory for limits shared by every worker of a server (scope="server").
# Included by _limits.pyx (one extension module, one concern per file).
#
# A shared limit keeps its counters in a region (csrc/sw_shm.h): an anonymous
# MAP_SHARED mapping made when the object is made, so that the workers forked
# later (Server.run_forever with threads > 1) all see it; or, given a name, a
# file in /dev/shm (SLUICEWAY_SHM_DIR overrides the folder) that unrelated
# processes open by that name.  The region's header holds the shape, seeds and
# settings, so a process opening a named region counts exactly like its
# creator.  Counting in a region is lock-free (csrc/sw_scount.h, sw_sbrk.h).

import os as _os


@cython.final
cdef class _Region:
    """A mapped shared region; unmapped when the last object using it goes."""

    def __init__(self, *args, **kwargs):
        raise TypeError("internal")

    def __dealloc__(self):
        sw_shm_unmap(&self.m)

    cdef sw_shm_hdr *hdr(self) noexcept:
        return <sw_shm_hdr *>self.m.base

    cdef void *payload(self) noexcept:
        return <char *>self.m.base + SW_SHM_HDR_SIZE

    @property
    def size(self):
        return self.m.size


cdef _Region open_region(str owner, uint32_t kind, size_t size, name):
    """Map a region for ``owner``: anonymous (name None) or the named file.

    ``created`` says whether the caller must fill the header and publish it.
    """
    cdef _Region r = _Region.__new__(_Region)
    cdef int rc, created = 1
    cdef sw_shm_hdr *h
    r.name = name
    if name is None:
        rc = sw_shm_anon(&r.m, size)
    else:
        r.path = shm_path(name)
        rc = sw_shm_open(&r.m, r.path.encode(), size, &created, 2000)
    if rc == SW_SHM_ESHAPE:
        raise ValueError(
            f"{owner}: {r.path} exists with another size (another kind or shape of limit); "
            f"use the same arguments everywhere, or remove it with "
            f"sluiceway.limits.unlink_shared({name!r})")
    if rc == SW_SHM_ETIMEOUT:
        raise RuntimeError(
            f"{owner}: {r.path} exists but was never finished by the process creating it "
            f"(did it die?); remove it with sluiceway.limits.unlink_shared({name!r})")
    if rc < 0:
        raise OSError(-rc, f"{owner}: cannot map {size} bytes of shared memory: "
                      f"{_os.strerror(-rc)}", r.path)
    r.created = created
    h = r.hdr()
    if created:
        h.version = SW_SHM_VERSION
        h.kind = kind
        h.size = size
    elif h.version != SW_SHM_VERSION or h.kind != kind or h.size != size:
        raise ValueError(f"{owner}: {r.path} holds another kind of limit (or another "
                         f"sluiceway version's); remove it with "
                         f"sluiceway.limits.unlink_shared({name!r}) or choose another name")
    return r


cdef tuple region_sketch(str owner, _Region r, uint32_t hashes, uint32_t slots, seeds):
    """Write (created) or check (opened) a sketch's shape and seeds; return the seeds."""
    cdef sw_shm_hdr *h = r.hdr()
    cdef int i
    if r.created:
        seeds = make_seeds(owner, hashes, seeds)
        h.hashes = hashes
        h.slots = slots
        for i in range(hashes):
            h.seeds[i] = seeds[i]
        return tuple(seeds)
    if h.hashes != hashes or h.slots != slots:
        raise ValueError(f"{owner}: {r.path} has hashes={h.hashes}, slots={h.slots}; this "
                         f"asks for hashes={hashes}, slots={slots}")
    found = tuple([h.seeds[i] for i in range(hashes)])
    if seeds is not None and tuple(make_seeds(owner, hashes, seeds)) != found:
        raise ValueError(f"{owner}: {r.path} was made with other seeds")
    return found


cdef int region_params(str owner, _Region r, tuple params, str what) except -1:
    """Write (created) or compare (opened) up to 8 settings of the region."""
    cdef sw_shm_hdr *h = r.hdr()
    cdef int i
    if r.created:
        for i in range(len(params)):
            h.params[i] = params[i]
        return 0
    for i in range(len(params)):
        if h.params[i] != <uint64_t>params[i]:
            raise ValueError(f"{owner}: {r.path} was made with other settings ({what}); use "
                             f"the same arguments in every process")
    return 0


cdef inline uint64_t double_bits(double d):
    """The bits of a double, to compare settings stored in a region header."""
    cdef uint64_t u
    memcpy(&u, &d, 8)
    return u


cdef _Region shared_cms(sw_cms *c, str owner, uint32_t kind, hashes, slots, seeds, name):
    """Map a shared sketch (Estimator, Inflight) and point c at its counters."""
    cdef uint64_t cseeds[SW_CMS_MAX_HASHES]
    cdef int i
    hashes, slots = check_shape(owner, hashes, slots)
    cdef _Region r = open_region(owner, kind, SW_SHM_HDR_SIZE + <size_t>hashes * slots * 8, name)
    seeds = region_sketch(owner, r, hashes, slots, seeds)
    for i in range(hashes):
        cseeds[i] = seeds[i]
    sw_cms_shape(c, hashes, slots, cseeds)
    c.cells = <int64_t *>r.payload()
    if r.created:
        sw_shm_publish(r.hdr())
    return r


cdef str scope_of(bint shared):
    return "server" if shared else "process"


def _tcell_add(value, w, n):
    """Test hook: sw_tcell_add on a cell holding ``value``; returns (new value, count)."""
    cdef uint64_t cell = value
    cdef int64_t c = sw_tcell_add(&cell, w, n)
    return cell, c


def _tcell_get(value, w):
    """Test hook: sw_tcell_get on a cell holding ``value``."""
    cdef uint64_t cell = value
    return sw_tcell_get(&cell, w)
