"""Every path under ROOT, in one place.

A host's files are the real dom0 paths below a prefix ROOT (``/`` on a dom0, ``./dom0`` for
``make run``, a short temp dir in tests). Nothing else in the tree builds a path by hand.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError

# sockaddr_un.sun_path is 108 bytes including the trailing NUL.
MAX_UNIX_SOCKET_PATH_BYTES = 107

# The programs of the tree, in the order xapi-init starts them on a master. The names are the
# supervisord program names and the console-script names.
PROGRAMS = (
    "xapi-init",
    "xapi-api",
    "xapi-ha",
    "xapi-db",
    "xapi-periodic",
    "xapi-mailer",
    "xapi-rrd",
    "xapi-liveness",
)
MANAGED_PROGRAMS = PROGRAMS[1:]  # every program xapi-init starts; xapi-init is supervisord's


def root_from_env(root=None):
    """The ROOT given on the command line, else $XAPI_ROOT, else ``/``."""
    return Path(root or os.environ.get("XAPI_ROOT") or "/").absolute()


@dataclass(frozen=True)
class Paths:
    """The paths of one host, all below ``root``."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).absolute())
        for path in self.unix_sockets():
            size = len(os.fsencode(str(path)))
            if size > MAX_UNIX_SOCKET_PATH_BYTES:
                raise ConfigError(
                    f"ROOT {self.root} is too long: the socket path {path} is {size} bytes, "
                    f"more than the {MAX_UNIX_SOCKET_PATH_BYTES} a unix socket allows; "
                    "choose a shorter ROOT"
                )

    def _p(self, rel):
        return self.root / rel

    def under(self, path):
        """A path named in a config file (``/opt/x`` on a dom0) as it is below this ROOT."""
        return self.root / str(path).lstrip("/")

    # etc
    @property
    def etc(self):
        return self._p("etc")

    @property
    def xapi_conf(self):
        return self._p("etc/xapi.conf")

    @property
    def xapi_conf_d(self):
        return self._p("etc/xapi.conf.d")

    @property
    def inventory(self):
        return self._p("etc/xensource-inventory")

    @property
    def xensource(self):
        return self._p("etc/xensource")

    @property
    def pool_conf(self):
        return self._p("etc/xensource/pool.conf")

    @property
    def db_conf(self):
        return self._p("etc/xensource/db.conf")

    @property
    def ptoken(self):
        return self._p("etc/xensource/ptoken")

    @property
    def master_d(self):
        return self._p("etc/xensource/master.d")

    @property
    def api_users(self):
        """The XenAPI password file (scrypt hashes, mode 0600) for logins over TCP."""
        return self._p("etc/xapi-users")

    @property
    def xapi_ssl_pem(self):
        """The management interface's TLS key and certificate, one PEM file (xapi's
        /etc/xensource/xapi-ssl.pem), mode 0600; made self-signed on first start if missing."""
        return self._p("etc/xensource/xapi-ssl.pem")

    @property
    def log_conf(self):
        return self._p("etc/xensource/log.conf")

    @property
    def license(self):
        return self._p("etc/xensource/license")

    @property
    def startup_script(self):
        return self._p("opt/xensource/libexec/xapi-startup-script")

    # var/lib
    @property
    def var_lib_xcp(self):
        return self._p("var/lib/xcp")

    @property
    def state_db(self):
        return self._p("var/lib/xcp/state.db")

    @property
    def redo_log(self):
        return self._p("var/lib/xcp/state.db.redo")

    @property
    def restore_db(self):
        """A database `xapi-ctl db restore` left to replace the pool DB at the next tree start."""
        return self._p("var/lib/xcp/restore_db.db")

    @property
    def local_db(self):
        return self._p("var/lib/xcp/local.db")

    @property
    def api_socket(self):
        return self._p("var/lib/xcp/xapi")

    @property
    def blobs(self):
        return self._p("var/lib/xcp/blobs")

    @property
    def periodic_db(self):
        """xapi-periodic's registered jobs and their deadlines."""
        return self._p("var/lib/xcp/periodic.db")

    @property
    def xensim(self):
        return self._p("var/lib/xensim")

    @property
    def rrds_dir(self):
        """The RRD archives, one gzipped rrdtool dump per host or VM (xapi-rrd owns them)."""
        return self._p("var/lib/xcp/blobs/rrds")

    def rrd_archive(self, uuid):
        return self._p(f"var/lib/xcp/blobs/rrds/{uuid}.gz")

    @property
    def mailer_state(self):
        """xapi-mailer's event token (the last message it has taken in) and repeat windows."""
        return self._p("var/lib/xcp/mailer.state")

    @property
    def mailer_outbox(self):
        """xapi-mailer's durable outbox: one file per e-mail (or hook run) not yet accepted."""
        return self._p("var/lib/xcp/mailer")

    @property
    def local_sr(self):
        """The directory of this host's local file SR ("Local storage"): beside the pool
        database, so its disks last across reboots (var/run is a tmpfs on a dom0)."""
        return self._p("var/lib/xcp/sr/local")

    @property
    def sys_class_net(self):
        """The network interfaces' sysfs directory: ROOT/sys/class/net when there is one (a
        fake sysfs made by a test), else the machine's /sys/class/net: a ROOT is a prefix, not
        a chroot, and the NICs are the machine's."""
        fake = self._p("sys/class/net")
        return fake if fake.is_dir() else Path("/sys/class/net")

    # var/run
    @property
    def var_run(self):
        return self._p("var/run")

    @property
    def ready_cookie(self):
        return self._p("var/run/xapi_startup.cookie")

    @property
    def init_complete_cookie(self):
        return self._p("var/run/xapi_init_complete.cookie")

    @property
    def run_dir(self):
        """var/run/xapi: sockets, pid and lock files, the orchestrator's state (mode 0700)."""
        return self._p("var/run/xapi")

    @property
    def notify_socket(self):
        return self._p("var/run/xapi/notify.sock")

    @property
    def supervisor_socket(self):
        return self._p("var/run/xapi/supervisor.sock")

    @property
    def supervisor_conf(self):
        return self._p("var/run/xapi/supervisord.conf")

    @property
    def supervisor_pid(self):
        return self._p("var/run/xapi/supervisord.pid")

    @property
    def startup_json(self):
        return self._p("var/run/xapi/startup.json")

    @property
    def commands_json(self):
        return self._p("var/run/xapi/commands.json")

    @property
    def init_state_json(self):
        """Operator stops and crash counter of xapi-init."""
        return self._p("var/run/xapi/init-state.json")

    @property
    def api_spool(self):
        """xapi-api's temporary files (database dumps on their way to a client), emptied when
        it starts."""
        return self._p("var/run/xapi/api-spool")

    def rpc_socket(self, program):
        return self._p(f"var/run/xapi/{program}.rpc")

    def rpc_endpoint(self, program):
        return f"ipc://{self.rpc_socket(program)}"

    def lock_file(self, program):
        return self._p(f"var/run/xapi/{program}.lock")

    @property
    def db_events_socket(self):
        return self._p("var/run/xapi/db.events")

    # var/log
    @property
    def log_dir(self):
        return self._p("var/log")

    def log_file(self, program):
        return self._p(f"var/log/{program}.log")

    def err_file(self, program):
        return self._p(f"var/log/{program}.err")

    @property
    def supervisord_log(self):
        return self._p("var/log/supervisord.log")

    def unix_sockets(self):
        yield self.notify_socket
        yield self.supervisor_socket
        yield self.api_socket
        yield self.db_events_socket
        for program in PROGRAMS:
            yield self.rpc_socket(program)

    def make_dirs(self):
        """Create the directories a host needs, with var/run/xapi private (0700)."""
        for d in (self.etc, self.xapi_conf_d, self.xensource, self.master_d, self.var_lib_xcp,
                  self.blobs, self.log_dir, self.var_run, self.xensim):
            d.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)


def bin_dir():
    """The bin directory of this installation: supervisord and the programs run from it."""
    return Path(sys.executable).parent


def supervisord_conf_d():
    """The per-program supervisord configs: installed beside the venv, or in the source tree."""
    installed = Path(sys.prefix) / "share" / "xapi-py" / "supervisord.conf.d"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "supervisord.conf.d"
