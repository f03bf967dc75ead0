# Declarations of the compiled proxy engine (see _engine.pyx). One file per
# concern under engine/, included here in the order of the layers
# (docs/architecture.md draws them).
from libc.stdint cimport uint32_t, uint64_t
from posix.uio cimport iovec
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM

from sluiceway._clock cimport sw_clock_now
from sluiceway._load cimport SW_LOAD_CAPSULE, sw_load, sw_load_down, sw_load_up
from sluiceway._io cimport *
from sluiceway._proxy cimport *
from sluiceway._pp cimport *
from sluiceway._tlsc cimport *
from sluiceway._span cimport (SW_EV_BODY, SW_EV_END, SW_EV_ERROR, SW_EV_HEAD, SW_EV_NEED_DATA,
                              SW_EV_UPGRADE, sw_find, sw_header_t, sw_ieq, sw_span_t)
from sluiceway._view cimport SW_VIEW_API_VERSION, sw_msg_t, sw_parser_api_t
from sluiceway._mstore cimport sw_ms_add, sw_ms_handle, sw_ms_observe, sw_ms_set
from sluiceway._alog cimport (sw_alog_json, sw_alog_rec_t, sw_buf_free, sw_buf_reserve, sw_buf_t,
                             sw_str_t)

include "engine/consts.pxd"
include "engine/clock.pxd"

cdef class _Side
cdef class _Nets
cdef class _IoLoop
cdef class _Conn
cdef class _Tls
cdef class _LoopState
cdef class _Engine
cdef class _Listener
cdef class _Reader
cdef class _Downstream
cdef class _Upstream
cdef class _Leg
cdef class Session

include "engine/realip.pxd"
include "engine/settings.pxd"
include "engine/headers.pxd"
include "engine/peer.pxd"
include "engine/reader.pxd"
include "engine/side.pxd"
include "engine/io.pxd"
include "engine/tls.pxd"
include "engine/loopstate.pxd"
include "engine/pool.pxd"
include "engine/loggate.pxd"
include "engine/engine.pxd"
include "engine/listener.pxd"
include "engine/downstream.pxd"
include "engine/upstream.pxd"
include "engine/legs.pxd"
include "engine/session.pxd"
