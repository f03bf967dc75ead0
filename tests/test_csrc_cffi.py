"""The C contracts of csrc/, driven directly through cffi (no Cython in
between), with hypothesis: each header's promises checked against a Python
statement of them (zlib, the pure-Python references _lb_py, _limits_py and
_forward_py, or a model written here).

The C files are compiled once per source change into build/cffi-<hash>/
(cffi's API mode, so structs are declared only by the fields used).
sw_http needs llhttp's sources (SLUICEWAY_LLHTTP_DIR, third_party/llhttp or
build/llhttp-9.3.0/lib, as setup.py finds them); without them its tests skip.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import sys
import zlib

import pytest

cffi = pytest.importorskip("cffi")
from hypothesis import HealthCheck, assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sluiceway import _forward_py, _lb_py, _limits_py  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
M64 = (1 << 64) - 1

CORE_CDEF = """
uint64_t sw_fnv1a64(const void *data, size_t len);
uint32_t sw_crc32_update(uint32_t state, const void *data, size_t len);
uint32_t sw_crc32_final(uint32_t state);
uint32_t sw_crc32(const void *data, size_t len);
uint64_t sw_mix64(uint64_t z);
#define SW_CRC32_INIT ...

#define SW_CMS_MAX_HASHES ...
#define SW_CMS_MAX_SLOTS ...
#define SW_CMS_OK ...
#define SW_CMS_EINVAL ...
typedef struct sw_cms { uint32_t hashes; uint32_t slots; uint64_t seeds[...]; int64_t *cells; ...; } sw_cms;
uint64_t sw_cms_keyhash(uint64_t seed, const void *key, size_t len);
int sw_cms_init(sw_cms *c, uint32_t hashes, uint32_t slots, const uint64_t *seeds);
void sw_cms_free(sw_cms *c);
void sw_cms_index(const sw_cms *c, const void *key, size_t len, uint32_t *idx);
int64_t sw_cms_incr(sw_cms *c, const void *key, size_t len, int64_t n);
int64_t sw_cms_get(const sw_cms *c, const void *key, size_t len);
void sw_cms_reset(sw_cms *c);

typedef struct sw_rate { ...; } sw_rate;
int sw_rate_init(sw_rate *r, uint32_t hashes, uint32_t slots, const uint64_t *seeds,
                 int64_t interval_ns, int64_t now_ns);
void sw_rate_free(sw_rate *r);
int64_t sw_rate_advance(sw_rate *r, int64_t now_ns);
int64_t sw_rate_observe(sw_rate *r, int64_t now_ns, const void *key, size_t len, int64_t n);
void sw_rate_sample(sw_rate *r, int64_t now_ns, const void *key, size_t len,
                    int64_t *prev, int64_t *curr, int64_t *elapsed_ns);

#define SW_LB_EINVAL ...
#define SW_LB_MAX_WEIGHT ...
typedef struct { uint32_t *slots; uint32_t nslots; uint32_t nbackends; } sw_wtable;
int sw_wtable_build(sw_wtable *t, const uint32_t *weights, uint32_t n);
void sw_wtable_free(sw_wtable *t);
typedef struct { ...; } sw_walk;
void sw_walk_init(sw_walk *w, uint32_t first, uint32_t n, uint64_t seed);
uint32_t sw_walk_stride(uint32_t n, uint64_t seed);
int sw_walk_next(sw_walk *w, uint32_t *out);
typedef struct { uint32_t hash; uint32_t backend; } sw_ring_point;
typedef struct { sw_ring_point *points; uint32_t npoints; uint32_t nbackends; } sw_ring;
int sw_ring_build(sw_ring *r, const char *const *names, const size_t *lens,
                  const uint32_t *weights, uint32_t n);
void sw_ring_free(sw_ring *r);
uint32_t sw_ring_find(const sw_ring *r, uint32_t key_hash);
size_t sw_bitmap_words(uint32_t n);
typedef struct { uint64_t *seen; ...; } sw_ring_walk;
void sw_ring_walk_init(sw_ring_walk *w, const sw_ring *r, uint32_t key_hash);
int sw_ring_walk_next(sw_ring_walk *w, uint32_t *out);
uint64_t sw_splitmix64(uint64_t *state);

typedef struct { uint32_t off; uint32_t len; } sw_span_t;
typedef struct { sw_span_t name; sw_span_t value; } sw_header_t;
int sw_ieq(const char *a, const char *b, size_t n);
int sw_find(const char *base, const sw_header_t *h, uint32_t count, const char *name, size_t n,
            uint32_t start);

#define SW_F_DROPPED ...
#define SW_F_HOST ...
#define SW_F_EXPECT_100 ...
#define SW_F_CONN_CLOSE ...
#define SW_F_CONN_KA ...
#define SW_F_CONN_UPGRADE ...
#define SW_F_XFF ...
#define SW_DROP_TRANSFER_ENCODING ...
#define SW_DROP_CONTENT_LENGTH ...
#define SW_DROP_EXPECT ...
#define SW_DROP_XFF ...
typedef struct { const char *name; const char *value; uint32_t name_len; uint32_t value_len; } sw_field_t;
size_t sw_fields_from_spans(sw_field_t *f, const char *base, const sw_header_t *h, uint32_t n);
size_t sw_fields_size(const sw_field_t *f, uint32_t n);
int sw_field_find(const sw_field_t *f, uint32_t n, const char *name, size_t len, uint32_t start);
unsigned sw_hop_mark(const sw_field_t *f, uint32_t n, unsigned char *drop, unsigned extra);
uint32_t sw_trailer_mark(const sw_field_t *t, uint32_t n, const char *conn, size_t conn_len,
                         unsigned char *drop);
size_t sw_write_fields(char *out, const sw_field_t *f, uint32_t n, const unsigned char *drop);
size_t sw_write_status_line(char *out, int status, const char *reason, size_t rlen);
const char *sw_reason(int status);
size_t sw_chunk_header(char *out, uint64_t n);
"""

HTTP_CDEF = """
typedef struct { uint32_t off; uint32_t len; } sw_span_t;
typedef struct { sw_span_t name; sw_span_t value; } sw_header_t;
typedef struct { uint32_t max_head; uint32_t max_url; uint32_t max_headers; } sw_http_limits_t;
typedef struct sw_http_s {
    uint32_t msg_start; sw_span_t url; sw_span_t reason; sw_header_t *headers; uint32_t nheaders;
    int keep_alive; int upgrade; uint64_t content_length; const char *body_at; size_t body_len;
    char *tbuf; sw_header_t *trailers; uint32_t ntrailers; int status; const char *reason_msg;
    size_t error_offset; ...;
} sw_http_t;
#define SW_EV_NEED_DATA ...
#define SW_EV_HEAD ...
#define SW_EV_BODY ...
#define SW_EV_END ...
#define SW_EV_UPGRADE ...
#define SW_EV_ERROR ...
int sw_http_init(sw_http_t *p, int is_request, const sw_http_limits_t *limits);
void sw_http_free(sw_http_t *p);
int sw_http_execute(sw_http_t *p, const char *data, size_t len, size_t resume_at, size_t *consumed);
int sw_http_finish(sw_http_t *p);
void sw_http_rebase(sw_http_t *p, uint32_t delta);
int sw_http_in_head(const sw_http_t *p);
const char *sw_http_method_name(const sw_http_t *p);
"""

CORE_SOURCES = ["sw_hash.c", "sw_cms.c", "sw_rate.c", "sw_lb.c", "sw_span.c", "sw_proxy.c"]
CORE_HEADERS = ["sw_hash.h", "sw_cms.h", "sw_rate.h", "sw_lb.h", "sw_span.h", "sw_proxy.h"]
LLHTTP_FILES = ("llhttp.h", "api.c", "http.c", "llhttp.c")


def _llhttp_dir():
    env = os.environ.get("SLUICEWAY_LLHTTP_DIR")
    for d in ([env, os.path.join(env, "lib")] if env else []) + [
            os.path.join(ROOT, "third_party", "llhttp"), os.path.join(ROOT, "build", "llhttp-9.3.0", "lib")]:
        if d and all(os.path.isfile(os.path.join(d, f)) for f in LLHTTP_FILES):
            return d
    return None


def _compile(name, cdef, headers, sources, include_dirs):
    """Build (or reuse) the cffi module `name`; return (ffi, lib)."""
    from cffi import FFI

    h = hashlib.sha256(cdef.encode() + sys.version.encode())
    for path in sorted(sources) + sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC)):
        with open(path, "rb") as f:
            h.update(path.encode() + f.read())
    out = os.path.join(ROOT, "build", f"cffi-{h.hexdigest()[:16]}")
    os.makedirs(out, exist_ok=True)
    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(name, "".join(f'#include "{x}"\n' for x in headers), sources=sources,
                   include_dirs=include_dirs, extra_compile_args=["-O1", "-w"])
    if out not in sys.path:
        sys.path.insert(0, out)
    try:
        mod = importlib.import_module(name)
    except ImportError:
        ffi.compile(tmpdir=out, verbose=False)
        mod = importlib.import_module(name)
    return mod.ffi, mod.lib


@pytest.fixture(scope="module")
def c():
    return _compile("_sw_contracts", CORE_CDEF, CORE_HEADERS,
                    [os.path.join(CSRC, f) for f in CORE_SOURCES], [CSRC])


@pytest.fixture(scope="module")
def ch():
    d = _llhttp_dir()
    if d is None:
        pytest.skip("llhttp's sources are not here (build once, or set SLUICEWAY_LLHTTP_DIR)")
    return _compile("_sw_http_contract", HTTP_CDEF, ["sw_http.h"],
                    [os.path.join(CSRC, f) for f in ("sw_http.c", "sw_span.c")]
                    + [os.path.join(d, f) for f in LLHTTP_FILES if f.endswith(".c")], [CSRC, d])


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
keys = st.binary(max_size=64)
u64 = st.integers(0, M64)


# -------------------------------------------------------------------- sw_hash --

def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & M64
    return h


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


@FAST
@given(data=keys, cut=st.integers(0, 64))
@example(data=b"", cut=0)
def test_hash_fnv1a64_and_crc32_are_the_published_functions(c, data, cut):
    ffi, lib = c
    assert lib.sw_fnv1a64(data, len(data)) == fnv1a64(data)
    assert lib.sw_crc32(data, len(data)) == zlib.crc32(data)
    # the split form extends a prefix's raw state, as nginx's crc32 does
    a, b = data[:cut], data[cut:]
    state = lib.sw_crc32_update(lib.sw_crc32_update(lib.SW_CRC32_INIT, a, len(a)), b, len(b))
    assert lib.sw_crc32_final(state) == zlib.crc32(data)


@FAST
@given(z=u64)
def test_hash_mix64_is_splitmix64s_finaliser(c, z):
    assert c[1].sw_mix64(z) == mix64(z)


def test_hash_mix64_is_a_bijection_on_a_sample(c):
    lib = c[1]
    outs = {lib.sw_mix64(i * 0x9E3779B97F4A7C15 & M64) for i in range(20000)}
    assert len(outs) == 20000


# --------------------------------------------------------------------- sw_cms --

def new_cms(c, hashes, slots, seeds):
    ffi, lib = c
    cms = ffi.new("sw_cms *")
    rc = lib.sw_cms_init(cms, hashes, slots, ffi.new("uint64_t[]", seeds) if seeds else ffi.NULL)
    return cms, rc


@FAST
@given(seed=u64, key=keys)
def test_cms_keyhash_matches_the_python_reference_bit_for_bit(c, seed, key):
    assert c[1].sw_cms_keyhash(seed, key, len(key)) == _limits_py.keyhash(seed, key)


@FAST
@given(seeds=st.lists(u64, min_size=1, max_size=8), slots=st.integers(1, 5000), key=keys)
def test_cms_index_is_the_documented_column_of_each_row(c, seeds, slots, key):
    ffi, lib = c
    cms, rc = new_cms(c, len(seeds), slots, seeds)
    try:
        assert rc == lib.SW_CMS_OK
        idx = ffi.new("uint32_t[]", len(seeds))
        lib.sw_cms_index(cms, key, len(key), idx)
        for r, seed in enumerate(seeds):
            h = _limits_py.keyhash(seed, key)
            assert idx[r] == r * slots + (((h >> 32) * slots) >> 32)
    finally:
        lib.sw_cms_free(cms)
        lib.sw_cms_free(cms)        # safe twice


@FAST
@given(ops=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), max_size=300),
       slots=st.sampled_from([1, 2, 7, 64, 4096]), seeds=st.lists(u64, min_size=1, max_size=6))
def test_cms_never_undercounts_and_is_exact_without_collisions(c, ops, slots, seeds):
    ffi, lib = c
    cms, rc = new_cms(c, len(seeds), slots, seeds)
    true = {}
    n_total = 0
    try:
        for k, n in ops:
            key = b"key-%d" % k
            est = lib.sw_cms_incr(cms, key, len(key), n)
            true[key] = true.get(key, 0) + n
            n_total += n
            assert est >= true[key]
            assert est == lib.sw_cms_get(cms, key, len(key))
        for key, cnt in true.items():
            est = lib.sw_cms_get(cms, key, len(key))
            assert cnt <= est <= n_total
        lib.sw_cms_reset(cms)
        assert all(lib.sw_cms_get(cms, k, len(k)) == 0 for k in true)
    finally:
        lib.sw_cms_free(cms)


def test_cms_init_refuses_bad_shapes(c):
    ffi, lib = c
    for hashes, slots in ((0, 10), (lib.SW_CMS_MAX_HASHES + 1, 10), (2, 0), (2, lib.SW_CMS_MAX_SLOTS + 1)):
        cms, rc = new_cms(c, hashes, slots, [1] * max(1, min(hashes, 40)))
        assert rc == lib.SW_CMS_EINVAL, (hashes, slots)
        lib.sw_cms_free(cms)
    cms, rc = new_cms(c, 2, 10, None)
    assert rc == lib.SW_CMS_EINVAL


# -------------------------------------------------------------------- sw_rate --

class RateModel:
    """sw_rate.h's windows, stated in Python (exact counts)."""

    def __init__(self, interval, start):
        self.interval, self.start, self.window = interval, start, 0
        self.cur, self.prev = {}, {}

    def advance(self, now):
        w = max(self.window, (now - self.start) // self.interval)
        if w == self.window + 1:
            self.prev, self.cur = self.cur, {}
        elif w > self.window + 1:
            self.prev, self.cur = {}, {}
        self.window = w
        return max(0, now - (self.start + w * self.interval))


@FAST
@given(interval=st.integers(1, 10**9), start=st.integers(-10**12, 10**12),
       ops=st.lists(st.tuples(st.integers(-10**9, 3 * 10**9), st.integers(0, 9), st.integers(0, 4)),
                    max_size=80))
def test_rate_rolls_windows_on_a_fixed_grid(c, interval, start, ops):
    ffi, lib = c
    seeds = ffi.new("uint64_t[]", [11, 22, 33, 44])
    r = ffi.new("sw_rate *")
    assert lib.sw_rate_init(r, 4, 1 << 16, seeds, interval, start) == 0
    model = RateModel(interval, start)
    now = start
    prev, curr, el = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
    try:
        for dt, k, n in ops:
            now += dt                     # may step back: windows never move backwards
            key = b"k%d" % k
            elapsed = model.advance(now)
            model.cur[key] = model.cur.get(key, 0) + n
            assert lib.sw_rate_observe(r, now, key, len(key), n) == model.cur[key]
            lib.sw_rate_sample(r, now, key, len(key), prev, curr, el)
            assert (prev[0], curr[0]) == (model.prev.get(key, 0), model.cur[key])
            assert el[0] == elapsed and 0 <= el[0] < interval
    finally:
        lib.sw_rate_free(r)
        lib.sw_rate_free(r)


def test_rate_init_refuses_a_zero_interval(c):
    ffi, lib = c
    r = ffi.new("sw_rate *")
    assert lib.sw_rate_init(r, 2, 8, ffi.new("uint64_t[]", [1, 2]), 0, 0) != 0
    lib.sw_rate_free(r)


# ---------------------------------------------------------------------- sw_lb --

weights_st = st.lists(st.integers(1, 40), min_size=1, max_size=12)


@FAST
@given(weights=weights_st)
def test_lb_weighted_table_is_the_stride_schedule(c, weights):
    ffi, lib = c
    t = ffi.new("sw_wtable *")
    assert lib.sw_wtable_build(t, ffi.new("uint32_t[]", weights), len(weights)) == 0
    try:
        table = [t.slots[i] for i in range(t.nslots)]
        assert table == _lb_py.weighted_table(weights)
        g = math.gcd(*weights)
        assert all(table.count(i) == w // g for i, w in enumerate(weights))
    finally:
        lib.sw_wtable_free(t)


def test_lb_weighted_table_refuses_a_zero_weight(c):
    ffi, lib = c
    t = ffi.new("sw_wtable *")
    assert lib.sw_wtable_build(t, ffi.new("uint32_t[]", [1, 0, 2]), 3) == lib.SW_LB_EINVAL
    lib.sw_wtable_free(t)


@FAST
@given(n=st.integers(1, 500), first=st.integers(0, 499), seed=u64)
def test_lb_fallback_walk_yields_every_other_backend_once(c, n, first, seed):
    ffi, lib = c
    assume(first < n)
    w = ffi.new("sw_walk *")
    lib.sw_walk_init(w, first, n, seed)
    out = ffi.new("uint32_t *")
    got = []
    while lib.sw_walk_next(w, out):
        got.append(out[0])
    assert got == list(_lb_py.fallback_walk(first, n, seed))
    assert sorted(got + [first]) == list(range(n))
    if n > 1:
        s = lib.sw_walk_stride(n, seed)
        assert 1 <= s < n and math.gcd(s, n) == 1


addrs = st.lists(st.one_of(
    st.builds(lambda a, b, p: f"10.0.{a}.{b}:{p}", st.integers(0, 255), st.integers(0, 255),
              st.integers(1, 65535)),
    st.just("unix:/run/app.sock"), st.just("[::1]:8080"), st.just("backend")), min_size=1, max_size=8,
    unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(servers=addrs, data=st.data())
def test_lb_ketama_ring_and_walk_match_nginx_placement(c, servers, data):
    ffi, lib = c
    weights = data.draw(st.lists(st.integers(1, 3), min_size=len(servers), max_size=len(servers)))
    keep = [ffi.new("char[]", s.encode()) for s in servers]
    r = ffi.new("sw_ring *")
    rc = lib.sw_ring_build(r, ffi.new("char *[]", keep), ffi.new("size_t[]", [len(s.encode()) for s in servers]),
                           ffi.new("uint32_t[]", weights), len(servers))
    assert rc == 0
    try:
        class B:
            def __init__(self, addr, weight):
                self.addr, self.weight = addr, weight
        ref = _lb_py.Consistent([B(s, w) for s, w in zip(servers, weights)])
        assert [(r.points[i].hash, r.points[i].backend) for i in range(r.npoints)] == ref.points()
        for key in data.draw(st.lists(keys, min_size=1, max_size=10)):
            h = zlib.crc32(key)
            w = ffi.new("sw_ring_walk *")
            lib.sw_ring_walk_init(w, r, h)
            seen = ffi.new("uint64_t[]", lib.sw_bitmap_words(len(servers)))
            w.seen = seen
            out = ffi.new("uint32_t *")
            got = []
            while lib.sw_ring_walk_next(w, out):
                got.append(out[0])
            assert got == list(ref._gen(h))
            assert got[0] == r.points[lib.sw_ring_find(r, h)].backend
    finally:
        lib.sw_ring_free(r)


@FAST
@given(state=u64)
def test_lb_splitmix64_is_the_generator(c, state):
    ffi, lib = c
    s = ffi.new("uint64_t *", state)
    for i in range(1, 4):
        z = (state + i * 0x9E3779B97F4A7C15) & M64
        assert lib.sw_splitmix64(s) == mix64(z)
    assert s[0] == (state + 3 * 0x9E3779B97F4A7C15) & M64


# ------------------------------------------------------------------- sw_proxy --

def fields(c, pairs):
    """(base bytes, cdata header array) for [(name, value), ...]: spans over
    one buffer, as the parser gives them."""
    ffi, _ = c
    base = b""
    spans = []
    for n, v in pairs:
        spans.append(((len(base), len(n)), (len(base) + len(n) + 2, len(v))))
        base += n + b": " + v + b"\r\n"
    arr = ffi.new("sw_header_t[]", max(1, len(pairs)))
    for i, ((no, nl), (vo, vl)) in enumerate(spans):
        arr[i].name.off, arr[i].name.len, arr[i].value.off, arr[i].value.len = no, nl, vo, vl
    return base, arr


def field_array(c, pairs, from_spans):
    """A sw_field_t array for [(name, value), ...] and what keeps its bytes
    alive: converted from spans over one buffer by sw_fields_from_spans (a
    received head), or pointing at one separate buffer per name and value
    (an edited head, whose fields are separate bytes objects)."""
    ffi, lib = c
    f = ffi.new("sw_field_t[]", max(1, len(pairs)))
    if from_spans:
        base, arr = fields(c, pairs)
        cbase = ffi.from_buffer(base)
        size = lib.sw_fields_from_spans(f, cbase, arr, len(pairs))
        assert size == lib.sw_fields_size(f, len(pairs))
        return f, (cbase, arr)
    keep = []
    for i, (n, v) in enumerate(pairs):
        cn, cv = ffi.new("char[]", n), ffi.new("char[]", v)
        keep += [cn, cv]
        f[i].name, f[i].name_len, f[i].value, f[i].value_len = cn, len(n), cv, len(v)
    return f, keep


def hop_mark(c, pairs, extra, from_spans):
    """(drop list, flags, written bytes) of sw_hop_mark + sw_write_fields."""
    ffi, lib = c
    f, keep = field_array(c, pairs, from_spans)
    drop = ffi.new("unsigned char[]", max(1, len(pairs)))
    flags = lib.sw_hop_mark(f, len(pairs), drop, extra)
    out = ffi.new("char[]", lib.sw_fields_size(f, len(pairs)) + 1)
    n = lib.sw_write_fields(out, f, len(pairs), drop)
    return [bool(drop[i]) for i in range(len(pairs))], flags, ffi.buffer(out, n)[:]


def test_proxy_reference_flags_are_the_headers(c):
    _, lib = c
    for name in ("F_DROPPED", "F_HOST", "F_EXPECT_100", "F_CONN_CLOSE", "F_CONN_KA",
                 "F_CONN_UPGRADE", "F_XFF", "DROP_TRANSFER_ENCODING", "DROP_CONTENT_LENGTH",
                 "DROP_EXPECT", "DROP_XFF"):
        assert getattr(_forward_py, name) == getattr(lib, "SW_" + name), name


def _cases(n):
    """A field name in upper, lower or mixed case."""
    return st.sampled_from([n, n.upper(), n.title()])


FIELD_NAMES = [b"host", b"connection", b"keep-alive", b"te", b"trailer", b"upgrade",
               b"proxy-connection", b"x-custom", b"expect", b"content-length",
               b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-host",
               b"x-forwarded-proto", b"accept", b"x-api-key", b"cookie", b"set-cookie", b"date"]
name_st = st.one_of(st.sampled_from(FIELD_NAMES).flatmap(_cases),
                    # other tokens, and bytes where only ASCII case may fold (0xC0 is not 0xE0)
                    st.binary(min_size=1, max_size=6).map(
                        lambda b: bytes(x for x in b if x not in b" :\r\n") or b"x"))
option_st = st.one_of(st.sampled_from(FIELD_NAMES + [b"close"]).flatmap(_cases),
                      st.binary(max_size=5).map(lambda b: bytes(x for x in b if x not in b",\r\n")))
blank_st = st.sampled_from([b"", b" ", b"\t", b" \t "])
conn_value_st = st.lists(st.tuples(blank_st, option_st, blank_st), max_size=4).map(
    lambda opts: b",".join(a + o + z for a, o, z in opts))
value_st = st.one_of(st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"100-continue",
                                      b"100-Continue", b"1", b""]),
                     st.binary(max_size=8).map(lambda b: bytes(x for x in b if x not in b"\r\n")))
pair_st = st.one_of(st.tuples(name_st, value_st),
                    st.tuples(st.sampled_from(FIELD_NAMES[1:2]).flatmap(_cases), conn_value_st))


@FAST
@given(pairs=st.lists(pair_st, max_size=10), extra=st.integers(0, 15), from_spans=st.booleans())
# the Connection rule: framing and Host are never removed by an option, in
# any case and with blanks around it; what it names goes, repeats included
@example(pairs=[(b"Connection", b" Content-Length ,\tHOST, transfer-encoding"),
                (b"Content-Length", b"0"), (b"Host", b"h"), (b"Transfer-Encoding", b"chunked")],
         extra=0, from_spans=False)
@example(pairs=[(b"X-Named", b"1"), (b"connection", b"x-named"), (b"x-named", b"2")],
         extra=0, from_spans=True)
@example(pairs=[(b"\xc0", b"1"), (b"Connection", b"\xe0")], extra=0, from_spans=False)
def test_proxy_hop_mark_and_write_fields_follow_the_reference(c, pairs, extra, from_spans):
    drop, flags, written = hop_mark(c, pairs, extra, from_spans)
    want_drop, want_flags = _forward_py.mark(pairs, extra)
    assert drop == want_drop
    assert flags == want_flags
    assert written == _forward_py.write_fields(pairs, want_drop)


@FAST
@given(pairs=st.lists(pair_st, max_size=8), extra=st.integers(0, 15))
def test_proxy_spans_and_separate_fields_are_treated_alike(c, pairs, extra):
    assert hop_mark(c, pairs, extra, True) == hop_mark(c, pairs, extra, False)


@FAST
@given(pairs=st.lists(pair_st, max_size=8), name=name_st, start=st.integers(0, 9))
def test_proxy_field_find_is_the_first_match_from_start(c, pairs, name, start):
    ffi, lib = c
    f, keep = field_array(c, pairs, False)
    want = next((i for i in range(start, len(pairs)) if pairs[i][0].lower() == name.lower()), -1)
    assert lib.sw_field_find(f, len(pairs), name, len(name), start) == want


trailer_name_st = st.one_of(name_st, st.sampled_from(sorted(_forward_py.NO_TRAILER)).flatmap(_cases))


@FAST
@given(pairs=st.lists(st.one_of(st.tuples(trailer_name_st, value_st), pair_st), max_size=8),
       conn=st.one_of(st.none(), conn_value_st), from_spans=st.booleans())
def test_proxy_trailer_mark_follows_the_reference(c, pairs, conn, from_spans):
    ffi, lib = c
    f, keep = field_array(c, pairs, from_spans)
    drop = ffi.new("unsigned char[]", max(1, len(pairs)))
    kept = lib.sw_trailer_mark(f, len(pairs), conn if conn is not None else ffi.NULL,
                               len(conn or b""), drop)
    want = _forward_py.trailer_mark(pairs, conn)
    assert [bool(drop[i]) for i in range(len(pairs))] == want
    assert kept == want.count(False)


def test_proxy_trailer_mark_drops_what_cannot_follow_the_body(c):
    ffi, lib = c
    pairs = [(b"X-Checksum", b"abc"), (b"Content-Length", b"3"), (b"Authorization", b"x"),
             (b"X-Named", b"1"), (b"Set-Cookie", b"a=b"), (b"X-Other", b"2")]
    f, keep = field_array(c, pairs, True)
    drop = ffi.new("unsigned char[]", len(pairs))
    conn = b"x-named"
    kept = lib.sw_trailer_mark(f, len(pairs), conn, len(conn), drop)
    assert [drop[i] for i in range(len(pairs))] == [0, 1, 1, 1, 1, 0] and kept == 2


@FAST
@given(n=st.integers(0, M64))
def test_proxy_chunk_header_is_lower_hex_and_crlf(c, n):
    ffi, lib = c
    out = ffi.new("char[32]")
    k = lib.sw_chunk_header(out, n)
    assert ffi.buffer(out, k)[:] == b"%x\r\n" % n and k <= 18


def test_proxy_status_line_and_reasons(c):
    ffi, lib = c
    import http as _http

    out = ffi.new("char[128]")
    for status in (200, 204, 301, 404, 431, 502, 504):
        reason = ffi.string(lib.sw_reason(status))
        assert reason.decode() == _http.HTTPStatus(status).phrase
        k = lib.sw_write_status_line(out, status, reason, len(reason))
        assert ffi.buffer(out, k)[:] == b"HTTP/1.1 %d %s\r\n" % (status, reason)
    assert ffi.string(lib.sw_reason(799)) == b""
    for status in (0, 99, 1000, -5):   # out of range: 500, as the reference says
        k = lib.sw_write_status_line(out, status, b"R", 1)
        assert ffi.buffer(out, k)[:] == _forward_py.status_line(status, b"R") == b"HTTP/1.1 500 R\r\n"


@FAST
@given(a=st.binary(max_size=20), b=st.binary(max_size=20))
def test_span_ieq_and_find_ignore_ascii_case_only(c, a, b):
    ffi, lib = c
    b = (b + a)[:len(a)]
    assert bool(lib.sw_ieq(a, a.swapcase(), len(a)))
    assert bool(lib.sw_ieq(a, b, len(a))) == (a.lower() == b.lower())   # bytes.lower is ASCII-only
    pairs = [(b"Accept", b"1"), (b"X-Key", b"2"), (b"x-key", b"3")]
    base, arr = fields(c, pairs)
    assert lib.sw_find(base, arr, 3, b"X-KEY", 5, 0) == 1
    assert lib.sw_find(base, arr, 3, b"X-KEY", 5, 2) == 2
    assert lib.sw_find(base, arr, 3, b"nope", 4, 0) == -1


# -------------------------------------------------------------------- sw_http --

def parse(ch, chunks, is_request=True, limits=(65536, 8192, 100), finish=False):
    """Drive sw_http as its header says (head buffer re-fed, spans re-based);
    return the events as plain Python values."""
    ffi, lib = ch
    p = ffi.new("sw_http_t *")
    assert lib.sw_http_init(p, is_request, ffi.new("sw_http_limits_t *", limits)) == 0
    consumed = ffi.new("size_t *")
    events = []
    carry = b""
    try:
        for chunk in chunks:
            data = carry + chunk
            pos = len(carry)
            carry = b""
            buf = ffi.from_buffer(data)
            while True:
                ev = lib.sw_http_execute(p, buf, len(data), pos, consumed)
                # (after an error, *consumed is the offending byte's offset,
                # which may lie in the part of the head fed before)
                assert (0 if ev == lib.SW_EV_ERROR else pos) <= consumed[0] <= len(data)
                pos = consumed[0]
                if ev == lib.SW_EV_HEAD:
                    span = lambda s: data[s.off:s.off + s.len]
                    hdrs = [(span(p.headers[i].name), span(p.headers[i].value)) for i in range(p.nheaders)]
                    start = ffi.string(lib.sw_http_method_name(p)) if is_request else span(p.reason)
                    events.append(("head", start, span(p.url) if is_request else None, hdrs))
                elif ev == lib.SW_EV_BODY:
                    off = int(ffi.cast("uintptr_t", p.body_at)) - int(ffi.cast("uintptr_t", buf))
                    piece = data[off:off + p.body_len]
                    if events and events[-1][0] == "body":
                        events[-1] = ("body", events[-1][1] + piece)
                    else:
                        events.append(("body", piece))
                elif ev == lib.SW_EV_END:
                    tr = []
                    for i in range(p.ntrailers):
                        t = p.trailers[i]
                        end = max(t.name.off + t.name.len, t.value.off + t.value.len)
                        tb = ffi.buffer(p.tbuf, end)[:]
                        tr.append((tb[t.name.off:t.name.off + t.name.len],
                                   tb[t.value.off:t.value.off + t.value.len]))
                    events.append(("end", tr))
                elif ev == lib.SW_EV_NEED_DATA:
                    if lib.sw_http_in_head(p):
                        off = p.msg_start
                        carry = data[off:]
                        lib.sw_http_rebase(p, off)
                    break
                elif ev == lib.SW_EV_ERROR:
                    events.append(("error", p.status, ffi.string(p.reason_msg).decode(), p.error_offset))
                    return events
                else:
                    events.append(("upgrade",))
                    return events
        if finish:
            ev = lib.sw_http_finish(p)
            events.append(("finish", ev))
        return events
    finally:
        lib.sw_http_free(p)


token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
hvalue = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ;=/.",
                 max_size=20).map(lambda s: s.strip().encode())


@st.composite
def requests(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]))
    path = b"/" + draw(st.text("abcxyz0123/._-", max_size=20)).encode()
    names = draw(st.lists(token.filter(lambda t: t not in (b"content-length", b"transfer-encoding",
                                                             b"connection", b"upgrade", b"expect",
                                                             b"host")),  # (a second Host is a 400)
                          max_size=8))
    hdrs = [(b"host", b"example.test")] + [(n, draw(hvalue)) for n in names]
    body = draw(st.binary(max_size=200))
    chunked = draw(st.booleans()) and body
    trailers = [(b"x-sum", b"%d" % len(body))] if chunked and draw(st.booleans()) else []
    msg = method + b" " + path + b" HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in hdrs)
    if chunked:
        hdrs.append((b"transfer-encoding", b"chunked"))
        pieces = [body[i:i + 37] for i in range(0, len(body), 37)]
        msg += (b"transfer-encoding: chunked\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(x), x) for x in pieces)
                + b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n")
    else:
        if body:
            hdrs.append((b"content-length", b"%d" % len(body)))
            msg += b"content-length: %d\r\n" % len(body)
        msg += b"\r\n" + body
    return msg, method, path, hdrs, body, trailers


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=st.lists(requests(), min_size=1, max_size=3), cuts=st.lists(st.integers(1, 2000), max_size=12))
def test_http_heads_bodies_trailers_are_what_was_sent_however_the_bytes_arrive(ch, reqs, cuts):
    stream = b"".join(r[0] for r in reqs)
    expected = []
    for _msg, method, path, hdrs, body, trailers in reqs:
        expected.append(("head", method, path, hdrs))
        if body:
            expected.append(("body", body))
        expected.append(("end", trailers))
    points = sorted({x % len(stream) for x in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(points, points[1:])]
    assert parse(ch, [stream]) == expected
    assert parse(ch, chunks) == expected
    assert parse(ch, [stream[i:i + 1] for i in range(len(stream))]) == expected


@pytest.mark.parametrize("raw, status, word", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400, "Content-Length"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "version"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "Transfer-Encoding"),
    (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, ""),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(20)) + b"\r\n", 431, ""),
])
def test_http_refusals_carry_their_status(ch, raw, status, word):
    for chunks in ([raw], [raw[i:i + 1] for i in range(len(raw))]):
        ev = parse(ch, chunks, limits=(4096, 256, 10))[-1]
        assert ev[0] == "error" and ev[1] == status, ev
        assert word.lower() in ev[2].lower()


def test_http_error_offset_points_into_the_call_that_failed(ch):
    good = b"GET / HTTP/1.1\r\nHost: a\r\n"
    bad = b"Bad Header: x\r\n\r\n"
    ev = parse(ch, [good + bad])[-1]
    assert ev[0] == "error" and ev[1] == 400
    assert len(good) <= ev[3] <= len(good) + len(b"Bad Header")


def test_http_close_delimited_response_ends_at_finish(ch):
    evs = parse(ch, [b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nsome", b" body"], is_request=False, finish=True)
    assert evs[0] == ("head", b"OK", None, [(b"Server", b"x")])
    assert evs[1] == ("body", b"some body") and evs[-1][1] == ch[1].SW_EV_END
    cut = parse(ch, [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], is_request=False, finish=True)
    assert cut[-1][1] == ch[1].SW_EV_ERROR


# -------------------------------------------------------------------- sw_alog --
# The access log's JSON record against its pure-Python reference (_alog_py),
# and the string escape against json.dumps itself: every line must load as
# JSON and give back what was logged.

ALOG_CDEF = """
typedef struct { char *p; size_t len; size_t cap; ...; } sw_buf_t;
int sw_buf_reserve(sw_buf_t *b, size_t more);
void sw_buf_free(sw_buf_t *b);
size_t sw_json_str(char *out, const char *s, size_t n);
typedef struct { const char *s; size_t n; } sw_str_t;
typedef struct {
    int64_t time_sec; int time_ms; sw_str_t request_id; sw_str_t client; int client_port;
    sw_str_t method; sw_str_t path; int minor; int status; uint64_t request_bytes;
    uint64_t response_bytes; sw_str_t upstream; int upstream_port; int upstream_status;
    double duration; double upstream_connect; double upstream_first_byte; int upstream_reused;
    uint64_t retries; sw_str_t error; sw_str_t extra;
} sw_alog_rec_t;
int sw_alog_json(sw_buf_t *b, const sw_alog_rec_t *r);
"""


@pytest.fixture(scope="module")
def ca():
    return _compile("_sw_alog_contract", ALOG_CDEF, ["sw_alog.h"],
                    [os.path.join(CSRC, "sw_alog.c")], [CSRC])


def c_json_str(ca, b):
    ffi, lib = ca
    out = ffi.new("char[]", max(6 * len(b), 1))
    n = lib.sw_json_str(out, b, len(b))
    assert n <= 6 * len(b)
    return ffi.buffer(out, n)[:]


@FAST
@given(st.binary(max_size=80) | st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")))
@example(b'"\\\x00\x1f\x7f\b\f\n\r\t')
@example("é€😀".encode())
@example(b"\xed\xa0\x80\xe0\x80\x80\xf4\x90\x80\x80\xf0\x9f\x98A\xc0\xaf\xff")
def test_alog_json_str_is_json_dumps(ca, b):
    from sluiceway import _alog_py

    got = c_json_str(ca, b)
    assert got == _alog_py.json_str(b)
    assert json.loads(b'"' + got + b'"') == b.decode("utf-8", "backslashreplace")


texts = st.binary(max_size=40)
secs_ = st.floats(min_value=-1.0, max_value=1e6, allow_nan=False)


@FAST
@given(st.fixed_dictionaries({
    "time_sec": st.integers(0, 253402300799), "time_ms": st.integers(-5, 1005),
    "request_id": texts, "client": texts, "client_port": st.integers(-1, 65535),
    "method": texts, "path": st.binary(max_size=300), "minor": st.integers(0, 1),
    "status": st.integers(0, 999), "request_bytes": st.integers(0, M64),
    "response_bytes": st.integers(0, M64), "upstream": st.none() | texts,
    "upstream_port": st.integers(-1, 65535), "upstream_status": st.integers(0, 999),
    "duration": secs_, "upstream_connect": secs_, "upstream_first_byte": secs_,
    "upstream_reused": st.booleans(), "retries": st.integers(0, 1000),
    "error": st.none() | texts,
    "extra": st.none() | st.sampled_from([b',"tenant":"acme"', b',"n":1,"x":null']),
}))
@example({"time_sec": 1796637600, "time_ms": 123, "request_id": b"4f1c", "client": b"10.0.0.7",
          "client_port": 51234, "method": b"GET", "path": b"/api?q=1", "minor": 1,
          "status": 200, "request_bytes": 0, "response_bytes": 512, "upstream": b"10.0.1.5",
          "upstream_port": 8080, "upstream_status": 200, "duration": 0.0031215,
          "upstream_connect": -1.0, "upstream_first_byte": 0.0023, "upstream_reused": False,
          "retries": 0, "error": None, "extra": None})
def test_alog_json_record_matches_reference(ca, rec):
    from sluiceway import _alog_py

    ffi, lib = ca
    keep = []

    def s(v):
        if v is None:
            return (ffi.NULL, 0)
        p = ffi.new("char[]", v or b"\0")
        keep.append(p)
        return (p, len(v))

    r = ffi.new("sw_alog_rec_t *")
    for k, v in rec.items():
        if k in ("request_id", "client", "method", "path", "upstream", "error", "extra"):
            r.__setattr__(k, s(v))
        else:
            r.__setattr__(k, v)
    b = ffi.new("sw_buf_t *")
    try:
        # two records into one buffer: the second appends (and may grow it)
        assert lib.sw_alog_json(b, r) == 0
        assert lib.sw_alog_json(b, r) == 0
        got = ffi.buffer(b.p, b.len)[:]
        assert b.cap >= b.len
    finally:
        lib.sw_buf_free(b)
    want = _alog_py.json_record(rec)
    assert got == want + want
    doc = json.loads(got.split(b"\n")[0])
    assert doc["path"] == rec["path"].decode("utf-8", "backslashreplace")
    assert doc["status"] == rec["status"] and doc["retries"] == rec["retries"]


def test_alog_buffer_doubles(ca):
    ffi, lib = ca
    b = ffi.new("sw_buf_t *")
    try:
        assert lib.sw_buf_reserve(b, 10) == 0 and b.cap == 4096
        b.len = 4000
        assert lib.sw_buf_reserve(b, 5000) == 0 and b.cap == 16384
        cap = b.cap
        assert lib.sw_buf_reserve(b, 100) == 0 and b.cap == cap    # room: no change
    finally:
        lib.sw_buf_free(b)


def test_alog_time_text_follows_the_clock(ca):
    """The buffer keeps the second's text: a later second gets its own."""
    from sluiceway import _alog_py

    ffi, lib = ca
    base = {"request_id": b"r", "client": b"c", "client_port": 1, "method": b"GET",
            "path": b"/", "minor": 1, "status": 200, "request_bytes": 0, "response_bytes": 0,
            "upstream": None, "upstream_port": -1, "upstream_status": 0, "duration": 0.5,
            "upstream_connect": -1.0, "upstream_first_byte": -1.0, "upstream_reused": 0,
            "retries": 0, "error": None, "extra": None}
    b = ffi.new("sw_buf_t *")
    keep = []
    want = b""
    try:
        for sec in (0, 0, 1, 86399, 86400, 951782400, 1796637600):
            rec = dict(base, time_sec=sec, time_ms=sec % 1000)
            r = ffi.new("sw_alog_rec_t *")
            for k, v in rec.items():
                if isinstance(v, bytes) or v is None:
                    p = ffi.new("char[]", v or b"\0") if v is not None else ffi.NULL
                    keep.append(p)
                    setattr(r, k, (p, len(v) if v is not None else 0))
                else:
                    setattr(r, k, v)
            assert lib.sw_alog_json(b, r) == 0
            want += _alog_py.json_record(rec)
        assert ffi.buffer(b.p, b.len)[:] == want
        assert b'"time":"1970-01-01T00:00:00.000Z"' in want
        assert b'"time":"2000-02-29T00:00:00.400Z"' in want
    finally:
        lib.sw_buf_free(b)
