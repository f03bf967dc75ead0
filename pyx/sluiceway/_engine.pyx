# distutils: sources = csrc/sw_proxy.c csrc/sw_span.c csrc/sw_io.c csrc/sw_clock.c csrc/sw_pp.c csrc/sw_alog.c csrc/sw_tls.c
# distutils: libraries = dl
"""The compiled proxy engine: downstream and upstream protocols, the
connection pool and the per-request state machine that runs the hooks.

Theory of operation
-------------------
A worker runs one uvloop loop. Every accepted connection gets a
``_Downstream`` object; every upstream connection an ``_Upstream``. Both are
``_Conn``s: they do their own socket I/O on one epoll set per loop
(``_IoLoop``, watched by the loop with a single add_reader); TLS is a layer
(``_Tls``) between a connection's reads and writes and its protocol.
Both feed received ``bytes`` to a ``_Wire``: the compiled HTTP/1.x parser of
``sluiceway._http`` (reached through the C function table in its capsule, see
csrc/sw_view.h) plus the buffer the parser's spans point into. No Python
object is created per header: a head goes on as received when it can, and
otherwise is filtered and written by C (csrc/sw_proxy.c: sw_hop_mark,
sw_write_fields), whether its fields are spans over the received bytes or
the bytes objects of a head a hook edited (engine/forward.pyx).

A request is a ``Session`` that walks through stages (``_advance``):

    HEAD -> early_request_filter -> request_filter -> upstream_peer
         -> (pool or connect) -> connected_to_upstream
         -> upstream_request_filter -> send head -> forward body
    upstream head -> upstream_response_filter -> response_filter -> send head
         -> forward body (response_body_filter) -> end -> logging

Hooks the application does not override are ``None`` here and skipped. A
hook's result is used at once when it is a plain value or a coroutine that
completes on its first ``send(None)``; only a coroutine that really suspends
is wrapped in a Task, and the stage machine resumes from its done callback.
During that first step a stand-in is the loop's current task, so asyncio
code that needs one works from a hook's first line (_hook_task.pxi).
While a stage waits, the side that feeds it stops parsing (``blocked``) and,
past a high-water mark of buffered bytes, stops reading.

Backpressure: when one side's write queue passes its high-water mark
(``on_pause_writing``) the other side stops reading until
``on_resume_writing``.

Timeouts are deadlines on the connection objects, checked by one periodic
timer per engine (no timer object per request).

Pipelined requests are parsed one at a time: the next head is not parsed
until the current response is complete, so responses go out in order.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.unicode cimport PyUnicode_DecodeLatin1
from cpython.buffer cimport PyBUF_READ, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.errno cimport (EAGAIN, ECONNABORTED, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM,
                         EPERM, EPROTO)
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from posix.uio cimport iovec

cdef extern from "<sys/socket.h>":
    enum:
        AF_INET
        AF_INET6
        AF_UNIX

import asyncio
import json
import logging
import os
import socket
import sys
import time

from sluiceway import _http as _httpmod
from sluiceway._base.errors import DOWNSTREAM, INTERNAL, UPSTREAM, Error, ParseError

from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF

cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object iter, object arg, PyObject **presult)
    bint PyCoro_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object o)
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    Py_ssize_t Py_REFCNT(object o)
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize) except -1


cdef sw_parser_api_t *API = <sw_parser_api_t *>PyCapsule_GetPointer(
    _httpmod._C_API, b"sluiceway._http._C_API")
if API.version != SW_VIEW_API_VERSION:
    raise ImportError("sluiceway._http and sluiceway._engine were built from different "
                      "sources (parser C API version mismatch): rebuild both")

error_log = logging.getLogger("sluiceway.error")


# One file per concern, in the order of the layers (docs/architecture.md):
include "engine/util.pyx"          # the clock, scratch buffers, small helpers
include "engine/settings.pyx"      # Settings (one name per setting), the hook table
include "engine/headers.pyx"       # HeaderMap, RequestHeader, ResponseHeader
include "engine/peer.pyx"          # HttpPeer
include "engine/reader.pyx"        # a parser and the bytes it parses; trailers
include "engine/side.pyx"          # _Side: what carries one end of a request
include "engine/io.pyx"            # epoll set, _Conn (write queue, closing, deadlines)
include "engine/tls.pyx"           # TLS as a layer between a _Conn's I/O and its protocol
include "engine/loopstate.pyx"     # what the services on one loop share
include "engine/pool.pyx"          # idle upstream connections
include "engine/loggate.pyx"       # rate-limited log lines
include "engine/engine.pyx"        # a service on a loop: the sweep, accepting, stopping
include "engine/listener.pyx"      # accepting connections
include "engine/realip.pyx"        # trusted networks; the client behind other proxies
include "engine/proxyproto.pyx"    # PROXY protocol headers: reading and writing
include "engine/downstream.pyx"    # the HTTP/1 client connection (a client's end)
include "engine/upstream.pyx"      # the HTTP/1 upstream connection (an origin's end)
include "engine/hooks.pyx"         # calling the app's hooks
include "engine/session.pyx"       # a request, and what its two ends tell it
include "engine/stages.pyx"        # the stages a request walks through
include "engine/connect.pyx"       # getting a request its upstream connection
include "engine/forward.pyx"       # the heads that go on; held-back bytes
include "engine/legs.pyx"          # the two bodies of a request
include "engine/ending.pyx"        # failures, retries, logging, the end
include "engine/observe.pyx"       # metrics cells, request ids, access-log records
