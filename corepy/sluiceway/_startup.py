"""What a start says and checks: logging destinations, the start-up lines,
bind errors that name the address and the fix, the checks of ``-t``, and
``--version``.

Used by :class:`sluiceway.server.Server` and the ``sluiceway`` command; not a
public API.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
from typing import List, Optional, Tuple

from .config import ConfigError, ServerConf, parse_listen

ERROR_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"
ACCESS_FORMAT = "%(asctime)s %(message)s"


class StartError(Exception):
    """The server cannot start; the message says why and what to change.

    Attributes:
        code: the exit status (2: the configuration or the command line is
            wrong; 1: the environment refused, e.g. a port in use).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


#: Signals held while the server starts (configuration read, app imported,
#: sockets bound), before the master installs its own handlers: without a
#: handler, SIGHUP, SIGQUIT and the SIGUSRs would end the process.
HELD_SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_held: set = set()


def _hold(signum, frame) -> None:
    _held.add(signum)


def hold_signals() -> None:
    """From now until the master runs, a reload, handover or log-reopen
    signal is remembered instead of ending the process; the master does
    each once the first workers accept (:func:`held_signals`)."""
    for sig in HELD_SIGNALS:
        signal.signal(sig, _hold)


def held_signals() -> set:
    """The signals :func:`hold_signals` caught so far (and forget them)."""
    out = set(_held)
    _held.clear()
    return out


class BindError(OSError):
    """A listening socket could not be bound; ``str()`` names the address
    and suggests a fix. ``errno`` is the kernel's."""

    def __init__(self, addr: str, exc: OSError) -> None:
        super().__init__(exc.errno, bind_message(addr, exc))
        self.addr = addr

    def __str__(self) -> str:
        return self.strerror


def bind_message(addr: str, exc: OSError) -> str:
    """'cannot listen on ADDR: why; what to do'."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, socket.gaierror):
        why = f"the host name does not resolve ({exc.strerror}); use an IP address such as 127.0.0.1"
    elif code == errno.EADDRINUSE:
        why = ("the address is already in use (another server, or another sluiceway, "
               "listens there); pick another port with -l HOST:PORT or the configuration's listen")
    elif code in (errno.EACCES, errno.EPERM):
        why = ("permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
               "use a port above 1023 (e.g. -l 127.0.0.1:8080)")
    elif code == errno.EADDRNOTAVAIL:
        why = ("no network interface of this machine has that address; use 127.0.0.1 "
               "(this machine only) or 0.0.0.0 (every interface)")
    elif code == errno.ENOENT:
        why = "the folder of the socket path does not exist"
    else:
        why = exc.strerror or str(exc)
    return f"cannot listen on {addr}: {why}"


def fmt_key(key) -> str:
    """A socket key (``_handover.sock_key``) as an address."""
    return "unix:" + key[1] if key[0] == "unix" else fmt_addr((key[1], key[2]))


def fmt_addr(a) -> str:
    if isinstance(a, str):
        return "unix:" + a
    host, port = a[0], a[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------ logging --

def _open_log(path: str, key: str) -> logging.Handler:
    try:
        return logging.FileHandler(path)
    except OSError as exc:
        raise StartError(f"cannot open {key} {path}: {exc.strerror} (create the folder, "
                         f"or change {key} in the configuration)", 2) from None


def setup_logging(conf: ServerConf) -> None:
    """Send ``sluiceway.error`` (and the rest of ``sluiceway.*``) to
    ``error_log`` or standard error, and, with ``access_log: true``, the
    access log to ``access_log_file`` or standard output. A logger that
    already has handlers (the program set up logging itself) is left alone.

    Raises:
        StartError: a log file cannot be opened.
    """
    root = logging.getLogger("sluiceway")
    if not root.handlers:
        root.addHandler(_handler(conf.error_log, "error_log", ERROR_FORMAT, sys.stderr))
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    access = logging.getLogger("sluiceway.access")
    if conf.access_log and not access.handlers:
        access.addHandler(_handler(conf.access_log_file, "access_log_file", ACCESS_FORMAT,
                                   sys.stdout))
        access.propagate = False   # not into the error log
        if access.level == logging.NOTSET or access.level > logging.INFO:
            access.setLevel(logging.INFO)


def _handler(path: Optional[str], key: str, fmt: str, stream) -> logging.Handler:
    h = _open_log(path, key) if path else logging.StreamHandler(stream)
    h.setFormatter(logging.Formatter(fmt))
    h._sluiceway = True   # ours: reopen_logs replaces it
    return h


def reopen_logs(conf: ServerConf) -> None:
    """Open the log files again, at the paths ``conf`` names (after
    logrotate moved them away, or a reload changed them), and close the old
    ones. Handlers a program added itself are left alone.

    Raises:
        StartError: a file cannot be opened (the old handler is kept).
    """
    setup_logging(conf)   # a log turned on since the start
    for name, path, key, fmt, stream in (
            ("sluiceway", conf.error_log, "error_log", ERROR_FORMAT, sys.stderr),
            ("sluiceway.access", conf.access_log_file, "access_log_file", ACCESS_FORMAT,
             sys.stdout)):
        logger = logging.getLogger(name)
        ours = [h for h in logger.handlers if getattr(h, "_sluiceway", False)]
        if not ours:
            continue
        new = _handler(path, key, fmt, stream)
        for h in ours:
            logger.removeHandler(h)
            h.close()
        logger.addHandler(new)


# ----------------------------------------------------------------- pid file --

def _start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (wall clock), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def running_pid(pid_file: str) -> Optional[int]:
    """The pid ``pid_file`` names when that process still runs (and is the
    one that wrote it: a pid reused by a later process does not count)."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().split()[0])
        written = os.stat(pid_file).st_mtime
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    started = _start_time(pid)
    if started is not None and started > written + 2.0:
        return None
    return pid


def refuse_if_running(pid_file: str) -> None:
    """Raise StartError when ``pid_file`` names a running server."""
    pid = running_pid(pid_file) if pid_file else None
    if pid is not None:
        raise StartError(f"a sluiceway already runs (pid {pid}, from pid_file {pid_file}): stop it "
                         f"first (kill -TERM {pid}), or replace it without downtime: start this "
                         f"with --upgrade, then kill -QUIT {pid}", 1)


def write_pid_file(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pid_file(path: str) -> None:
    """Remove ``path`` if it names this process (an upgrade's new process
    wrote its own over it)."""
    try:
        with open(path) as f:
            if int(f.read().split()[0]) != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError, IndexError):
        pass


def log_destinations(conf: ServerConf) -> Tuple[str, str]:
    err = conf.error_log or "standard error"
    if not conf.access_log:
        acc = "off (access_log: true turns it on)"
    else:
        acc = conf.access_log_file or "standard output"
    return err, acc


# ------------------------------------------------------------------- checks --

def check_writable(path: str, key: str) -> Optional[str]:
    """A problem with writing ``path`` (named by its configuration key), or None."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        return f"{key} {path} is a folder; give a file name"
    if os.path.exists(full):
        return None if os.access(full, os.W_OK) else f"{key} {path} is not writable by this user"
    folder = os.path.dirname(full)
    if not os.path.isdir(folder):
        return f"{key} {path}: the folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"{key} {path}: the folder {folder} is not writable by this user"
    return None


def check_paths(conf: ServerConf, daemon: bool) -> List[str]:
    """Problems with the files a start would write."""
    out = []
    if conf.error_log:
        out.append(check_writable(conf.error_log, "error_log"))
    if conf.access_log and conf.access_log_file:
        out.append(check_writable(conf.access_log_file, "access_log_file"))
    if daemon:
        if not conf.pid_file:
            out.append("pid_file is empty; a daemon needs one")
        else:
            out.append(check_writable(conf.pid_file, "pid_file"))
    return [p for p in out if p]


def check_address(addr: str) -> Tuple[Optional[str], Optional[str]]:
    """(problem, note) for one listen address: malformed, unresolvable, not
    an address of this machine, or not allowed are problems; an address in
    use right now is a note (the server being checked may be the one using
    it)."""
    try:
        parsed = parse_listen(addr)
    except ConfigError as exc:
        return str(exc), None
    if parsed[0] == "unix":
        folder = os.path.dirname(os.path.abspath(parsed[1]))
        if not os.path.isdir(folder):
            return f"cannot listen on {addr}: the folder {folder} does not exist", None
        return None, None
    _, host, port = parsed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for p, reuse in ((0, False), (port, True)):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host or "0.0.0.0", p))
        except OSError as exc:
            if p == 0 or exc.errno != errno.EADDRINUSE:
                return bind_message(addr, exc), None
            return None, f"{addr} is in use right now (by another process, or by this server if it runs)"
        finally:
            s.close()
    return None, None


# ------------------------------------------------------------------ version --

def version_text() -> str:
    """``sluiceway --version``: ours, llhttp's, the Python build and the
    event loop."""
    import platform
    import sysconfig

    from . import __version__
    from ._compiled import load

    http = load("_http")
    gil = "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "with GIL"
    try:
        import uvloop
        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "uvloop missing"
    return (f"sluiceway {__version__}\n"
            f"llhttp {getattr(http, 'LLHTTP_VERSION', '?')} (compiled in)\n"
            f"{platform.python_implementation()} {platform.python_version()} ({gil}, "
            f"{sysconfig.get_platform()}), {loop}\n"
            f"package: {os.path.dirname(os.path.abspath(http.__file__))}")


class VersionAction:
    """``--version`` for argparse: prints :func:`version_text` as is (argparse's
    own action re-wraps the lines) and exits 0."""

    def __new__(cls, *args, **kw):
        import argparse

        class _Action(argparse.Action):
            def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                         help="print sluiceway's, llhttp's and Python's versions and exit"):
                super().__init__(option_strings, dest, nargs=0, default=default, help=help)

            def __call__(self, parser, namespace, values, option_string=None):
                print(version_text())
                parser.exit(0)

        return _Action(*args, **kw)


def startup_lines(addresses: List[str], conf: ServerConf, conf_path: Optional[str],
                  pid: int, daemon: bool) -> List[str]:
    """What a start prints: where it listens, the configuration it read,
    workers, pid file and log destinations."""
    from . import __version__

    urls = ", ".join(("http://" + a) if not a.startswith("unix:") and "://" not in a else a
                     for a in addresses)
    err, acc = log_destinations(conf)
    n = conf.threads
    lines = [f"sluiceway {__version__}: listening on {urls or '(no address)'}",
             f"  configuration: {os.path.abspath(conf_path) if conf_path else '(built-in defaults: no -c given)'}",
             f"  workers: {n} process{'es' if n != 1 else ''} (threads: {n}); master pid {pid}",
             f"  pid file: {conf.pid_file if daemon else '(none: written only with -d)'}",
             f"  error log: {err}; access log: {acc}"]
    return lines
