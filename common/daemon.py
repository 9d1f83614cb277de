"""The base every program runs on: --root, logging, the lock, the ROUTER, READY, the watchdog,
an orderly SIGTERM."""

import asyncio
import contextvars
import fcntl
import gc
import logging
import os
import signal
import sys
import time

from common import config as config_mod
from common import logconf
from common.errors import ConfigError, XapiError
from common.paths import Paths, root_from_env
from common.readiness import Notifier, ping_watchdog
from common.rpc import RpcServer

VERSION = "0.1.0"
EXIT_OK, EXIT_ERROR = 0, 1

current_task = contextvars.ContextVar("current_task", default="main")


class _TaskFilter(logging.Filter):
    def __init__(self, program):
        super().__init__()
        self.program = program

    def filter(self, record):
        record.program = self.program
        record.task = current_task.get()
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(program)s [%(task)s] %(message)s"


class WatchedFileHandler(logging.FileHandler):
    """A file handler that reopens its file once the file at its path is another one (renamed
    by the rotation job, or removed), like logging.handlers.WatchedFileHandler, whose module
    (sockets, pickle, queues) every program would otherwise import at start for this class."""

    def __init__(self, filename):
        super().__init__(filename, delay=False, encoding="utf-8")
        self._stamp = self._stat_stream()

    def _stat_stream(self):
        st = os.fstat(self.stream.fileno())
        return st.st_dev, st.st_ino

    def emit(self, record):
        try:
            st = os.stat(self.baseFilename)
            moved = (st.st_dev, st.st_ino) != self._stamp
        except FileNotFoundError:
            moved = True
        if moved and self.stream is not None:
            self.stream.flush()
            self.stream.close()
            self.stream = self._open()
            self._stamp = self._stat_stream()
        super().emit(record)


def setup_logging(paths, program):
    """One line per record in var/log/<program>.log (a WatchedFileHandler, so the rotation job
    can rename the file under it); levels from etc/xensource/log.conf."""
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    levels = logconf.read_log_levels(paths.log_conf)
    handler = WatchedFileHandler(paths.log_file(program))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_TaskFilter(program))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logconf.level_for(levels, program))
    return logging.getLogger(program)


class LockHeld(XapiError):
    code = "DAEMON_ALREADY_RUNNING"


def take_lock(paths, program):
    """flock var/run/xapi/<program>.lock, so two copies of a program never run for one ROOT.
    Returns the open file, which must stay open for the life of the process."""
    path = paths.lock_file(program)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    lock_file = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise LockHeld("DAEMON_ALREADY_RUNNING", program, holder, str(path)) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


class Daemon:
    """Subclasses set ``program``, register their methods in ``setup`` and may override
    ``serve`` (the main task; by default: wait for SIGTERM)."""

    program = None
    flags = ()                  # the store_true options a subclass adds to arg_parser
    ready_when_serving = True   # xapi-init sends READY itself, when start-up is complete
    watchdog = True

    def __init__(self, argv=None):
        self.args = self.parse_args(argv)
        self.paths = Paths(root_from_env(self.args.root))
        self.config = config_mod.load_config(self.paths, overrides=self.option_overrides())
        self.log = logging.getLogger(self.program)
        self.notifier = Notifier(self.program)
        self.started_at = time.time()
        self.state = "starting"
        self.role = None
        self.applied = []          # commands applied, in order: {"m", "a", "kw", "at"}
        self.server = None
        self._stop = None
        self._lock = None

    # -- arguments ---------------------------------------------------------------------
    @classmethod
    def arg_parser(cls):
        import argparse
        parser = argparse.ArgumentParser(prog=cls.program, description=cls.__doc__)
        parser.add_argument("--root", help="the host's ROOT (default $XAPI_ROOT, else /)")
        parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                            help="set an option of xapi.conf (xapi.conf and xapi.conf.d win)")
        return parser

    def option_overrides(self):
        overrides = {}
        for item in self.args.option:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"expected KEY=VALUE, got '{item}'", path="command line")
            overrides[key.strip()] = value.strip()
        return overrides

    @classmethod
    def parse_args(cls, argv):
        """The usual command line (as supervisord gives it) is read here; anything else
        (--help, an unknown or malformed option) goes to argparse, for its help and errors."""
        simple = parse_simple_args(sys.argv[1:] if argv is None else argv, cls.flags)
        return simple if simple is not None else cls.arg_parser().parse_args(argv)

    # -- methods -----------------------------------------------------------------------
    def register(self, name, fn, command=False):
        """Serve ``name``. A ``command`` is configuration xapi-init sends and replays after a
        restart: idempotent, and recorded for ``sys.health``."""
        if command:
            fn = self._recording(name, fn)
        self.server.register(name, fn)

    def _recording(self, name, fn):
        async def recorded(*args, **kwargs):
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            self.applied = [c for c in self.applied if c["m"] != name]
            self.applied.append({"m": name, "a": list(args), "kw": kwargs, "at": time.time()})
            return result
        recorded.__signature__ = _signature_of(fn)
        return recorded

    def health(self):
        return {
            "name": self.program,
            "pid": os.getpid(),
            "state": self.state,
            "uptime_s": round(time.time() - self.started_at, 3),
            "version": VERSION,
            "role": self.role,
            "applied": list(self.applied),
        }

    def stats(self):
        """Counters for ``sys.stats``; subclasses add their own keys."""
        import resource
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "name": self.program,
            "calls": dict(self.server.calls),
            "rpc_errors": dict(self.server.errors),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "max_rss_kib": usage.ru_maxrss,
        }

    def set_role(self, role, master_address=None):
        """Command: the host's pool role, as xapi-init read it from pool.conf."""
        if role not in ("master", "slave", "broken"):
            raise XapiError("INVALID_VALUE", "role", role)
        self.role = role
        self.master_address = master_address
        return True

    # -- life cycle --------------------------------------------------------------------
    async def setup(self):
        """Register methods, open files. Runs before the ROUTER serves and before READY."""

    async def serve(self):
        """The main task; returns the exit code. Default: run until SIGTERM."""
        await self._stop.wait()
        return EXIT_OK

    async def teardown(self):
        """Release what ``setup`` took; runs after STOPPING=1 is sent."""

    def request_stop(self):
        self.log.info("%s: stop requested", self.program)
        self._stop.set()

    async def _amain(self):
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        self.server = RpcServer(self.paths.rpc_endpoint(self.program))
        self.server.register("sys.health", self.health)
        self.server.register("sys.stats", self.stats)
        self.register("sys.set_role", self.set_role, command=True)
        await self.setup()
        try:
            self.paths.rpc_socket(self.program).unlink()
        except FileNotFoundError:
            pass
        self.server.start()
        watchdog_task = None
        if self.watchdog and self.notifier.enabled:
            interval_s = max(0.2, self.config["watchdog-timeout"] / 4)
            watchdog_task = loop.create_task(ping_watchdog(self.notifier, interval_s))
        self.state = "serving"
        if self.ready_when_serving:
            self.notifier.ready()
        self.log.info("%s %s serving at %s (pid %d)", self.program, VERSION,
                      self.server.endpoint, os.getpid())
        try:
            code = await self.serve()
        finally:
            self.state = "stopping"
            self.notifier.stopping()
            if watchdog_task:
                watchdog_task.cancel()
            await self.teardown()
            await self.server.close()
        self.log.info("%s exiting with code %s", self.program, code)
        return code

    def run(self):
        os.umask(0o077)
        try:
            self._lock = take_lock(self.paths, self.program)
        except LockHeld as exc:
            _, holder, lock_path = exc.params
            print(f"{self.program}: another copy is already running for ROOT "
                  f"{self.paths.root} (pid {holder}, lock {lock_path}); exiting",
                  file=sys.stderr)
            return EXIT_ERROR
        setup_logging(self.paths, self.program)
        try:
            return asyncio.run(self._amain())
        except ConfigError as exc:
            self.log.error("%s", exc)
            print(f"{self.program}: {exc}", file=sys.stderr)
            return EXIT_ERROR

    @classmethod
    def main(cls, argv=None):
        try:
            daemon = cls(argv)
        except ConfigError as exc:
            print(f"{cls.program}: {exc}", file=sys.stderr)
            cls.config_error_before_start(argv, exc)
            return EXIT_ERROR
        code = daemon.run()
        # Everything is closed and flushed by now. The interpreter's exit still runs a full
        # garbage collection over every object of the imports, ~50 ms, which a restart waits
        # for (supervisord respawns once the old process is gone); frozen, they are skipped.
        # Objects freed by reference counting (an open file, say) are finalised as before.
        gc.freeze()
        return code

    @classmethod
    def config_error_before_start(cls, argv, exc):
        """A bad option or file stopped the program before it ran; xapi-init records it."""


def parse_simple_args(argv, flags=()):
    """``--root R``, ``-o K=V`` / ``--option K=V`` (repeated) and the ``flags`` (store_true)
    as arg_parser's namespace, or None for anything else."""
    args = Namespace(root=None, option=[], **{f[2:].replace("-", "_"): False for f in flags})
    items = list(argv)
    while items:
        item = items.pop(0)
        name, eq, value = item.partition("=") if item.startswith("--") else (item, "", "")
        if name in flags and not eq:
            setattr(args, name[2:].replace("-", "_"), True)
            continue
        if name not in ("--root", "-o", "--option"):
            return None
        if not eq:
            if not items or items[0].startswith("-"):
                return None
            value = items.pop(0)
        if name == "--root":
            args.root = value
        else:
            args.option.append(value)
    return args


class Namespace:
    """What parse_simple_args returns: attributes, as argparse's Namespace has them."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __eq__(self, other):
        return vars(self) == vars(other)

    def __repr__(self):
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in sorted(vars(self).items()))})"


def _signature_of(fn):
    import inspect
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None
