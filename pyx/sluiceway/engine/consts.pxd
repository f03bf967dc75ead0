# Included by _engine.pxd: the engine's constants, as C enums (compile-time
# constants, no Python object; Cython 3 deprecates DEF).

cdef enum:
    # Bytes queued for writing past which the other side stops reading
    # (on_pause_writing), and down to which it resumes (on_resume_writing);
    # also the bytes buffered from one side before reading from it pauses.
    HIGH_WATER = 65536
    LOW_WATER = 16384

    # The connections' own I/O.
    RBUF_SIZE = 65536   # bytes asked of one recv (into a bytes object, see _IoLoop.recv)
    COPY_MAX = 4096     # reads up to this size are copied out of the receive buffer
    MAX_READY = 256     # descriptors handled per wake-up
    MAX_IOV = 64        # buffers written by one writev

    # A request body still on its way when the response is decided: up to
    # this many bytes left (by Content-Length) are read and dropped after
    # the response and the connection is kept; more, or an unknown length,
    # and the response says `Connection: close` and the connection closes
    # lingering.
    DISCARD_MAX = 65536

    # Informational (1xx) responses an upstream may send before its final
    # one; each counts as progress for the read timeout, so the total is
    # bounded.
    MAX_INFORMATIONAL = 16

    # Connections whose deadline passed, acted on per loop iteration (the
    # rest wait for the next one, after the ready I/O).
    TICK_SLICE = 64

    # Log lines of one kind written per second before they are counted.
    LOG_BURST = 5

    # A response head may be this large and have this many fields (or the
    # request limits, when larger).
    MAX_RESPONSE_HEAD = 65536
    MAX_RESPONSE_FIELDS = 256

    # Free client parsers an engine keeps.
    MAX_FREE_READERS = 256

    # llhttp's method numbers the engine looks at.
    HTTP_HEAD = 2
    HTTP_CONNECT = 5


# The hooks, as indices into _Engine.hooks (names: HOOK_NAMES, settings.pyx).
cdef enum:
    H_NEW_CTX = 0
    H_EARLY = 1
    H_REQ_FILTER = 2
    H_REQ_BODY = 3
    H_PEER = 4
    H_CONNECTED = 5
    H_UP_REQ = 6
    H_UP_RESP = 7
    H_RESP = 8
    H_RESP_BODY = 9
    H_LOGGING = 10
    H_FAIL_CONNECT = 11
    H_ERR_PROXY = 12
    H_FAIL_PROXY = 13
    H_UP_RESP_BODY = 14
    H_SUPPRESS_ERROR_LOG = 15
    H_REQUEST_SUMMARY = 16


# Why reading is paused (bit flags).
cdef enum:
    R_BUFFERED = 1      # our own buffer is over the high-water mark
    R_PEER_FULL = 2     # the other side's write buffer is full
    R_THROTTLE = 4      # the response is sent no faster than its rate limit


# Deadline kinds (``_Conn.dl_kind``).
cdef enum:
    DL_NONE = 0
    DL_HEAD = 1         # a client's request head
    DL_IDLE = 2         # an idle keep-alive client connection
    DL_TOTAL = 3        # a whole request (request_timeout)
    DL_READ = 4         # upstream response bytes
    DL_WRITE = 5        # an upstream taking the request
    DL_POOL = 6         # a pooled upstream connection
    DL_DISCARD = 7      # reading and dropping the rest of an answered request's body
    DL_LINGER = 8       # closing: our side shut down, reading and dropping what still comes
    DL_HANDSHAKE = 9    # a client's TLS handshake (a TLS listener's handshake_timeout)


# Stages of a session (Session._advance).
cdef enum:
    S_EARLY = 1
    S_REQ_FILTER = 2
    S_REQ_FILTER_DONE = 3
    S_PEER = 4
    S_PEER_DONE = 5
    S_CONNECT = 6
    S_CONNECTED = 7
    S_UP_REQ = 8
    S_SEND = 9
    S_REQ_BODY_DONE = 10
    S_UP_RESP = 11
    S_RESP = 12
    S_RESP_SEND = 13
    S_RESP_BODY_DONE = 14
    S_FAIL_CONNECT_DONE = 15
    S_ERR_PROXY_DONE = 16
    S_FAIL_PROXY_DONE = 17
    S_LOG_DONE = 18
    S_NEW_CTX = 19


# How the response body goes to the client.
cdef enum:
    M_NONE = 0          # no body (HEAD, 1xx, 204, 304)
    M_RAW = 1           # as received, Content-Length kept
    M_CHUNKED = 2       # re-chunked
    M_CLOSE = 3         # delimited by closing the connection


# The engine's metrics cells (_Engine.mc), in the order of
# sluiceway.metrics.engine_cells.
cdef enum:
    MC_REQ = 0          # requests by status class: 1xx..5xx, then none (6 cells)
    MC_DURATION = 6     # histograms (DURATION_BUCKETS)
    MC_CONNECT = 7
    MC_TTFB = 8
    MC_RX = 9           # request body bytes
    MC_TX = 10          # response body bytes
    MC_CONN_OPEN = 11   # gauge, set by the sweep
    MC_CONN_ACC = 12
    MC_CONN_REJ = 13
    MC_POOL_IDLE = 14   # gauges, set by the sweep
    MC_POOL_BUSY = 15
    MC_POOL_OPENED = 16 # the pool's counters, set by the sweep
    MC_POOL_REUSED = 17
    MC_POOL_FULL = 18   # closed: evicted from a full pool
    MC_POOL_OTHER = 19  # closed: any other reason
    MC_ERR = 20         # errors by kind (ERROR_KINDS in sluiceway.metrics, 9 cells)
    MC_RETRIES = 29
    MC_TLS_FULL = 30    # new TLS upstream connections: full handshakes (set by the sweep)
    MC_TLS_RESUMED = 31 # ... and resumed sessions
    MC_N = 32
    N_DURATION_BUCKETS = 13

# The error kinds, as offsets from MC_ERR.
cdef enum:
    EK_CONNECT = 0
    EK_TIMEOUT = 1
    EK_INVALID_RESPONSE = 2
    EK_CLIENT_ABORT = 3
    EK_CLIENT = 4
    EK_UPSTREAM = 5
    EK_LOAD_SHED = 6
    EK_INTERNAL = 7
    EK_TLS = 8          # a client's TLS handshake failed (not a request: no other series counts it)

# Access-log formats (Settings.access_log_format).
cdef enum:
    AL_TEXT = 0         # a line on the sluiceway.access logger
    AL_JSON = 1         # one JSON object per line, through the buffered writer
    AL_COMBINED = 2     # nginx's "combined", through the buffered writer

# real_ip_header kinds (as sluiceway._realip_py)
cdef enum:
    RIP_XFF = 0
    RIP_X_REAL_IP = 1
    RIP_FORWARDED = 2

# forwarded_header_style bits: which forwarding fields the proxy writes
cdef enum:
    FWD_X = 1                   # X-Forwarded-For, -Proto, -Host
    FWD_RFC = 2                 # Forwarded (RFC 7239)
