"""The start-up step table: one entry per step of the seed (seeds/xapi-startup.txt), in its order.

Each step has the seed's words as its name, the role it runs in (``both``, ``master``,
``slave``), its flags and its action, as data:

- ``Local(fn)``: a local function by name, defined in one of the modules of
  runner.LOCAL_ACTION_MODULES (actions.py, platform_steps.py, ...);
- ``StartProgram(program)``: start a program through supervisord and wait for its READY; the
  orchestrator then sends it ``sys.set_role``;
- ``Command(program, method, args)``: send a command; it is recorded and replayed to the
  program after every restart, unless ``replay=False`` (work done once per start of the tree,
  such as disabling every host, must not be redone when one daemon restarts);
- no action at all: nothing to run yet (the step is ``pending``).

A step whose real work is built by a later issue names that work in ``pending``: it runs what
exists and shows ``pending`` in ``xapi-ctl status``, never ``ok``. Later work adds a method to a
daemon and a line here, not orchestrator code.
"""

from dataclasses import dataclass

BOTH, MASTER, SLAVE = "both", "master", "slave"


@dataclass(frozen=True)
class Local:
    fn: str


@dataclass(frozen=True)
class StartProgram:
    program: str


@dataclass(frozen=True)
class Command:
    program: str
    method: str
    args: tuple = ()
    timeout_s: float | None = None   # None: the option command-timeout
    only_if: str | None = None       # name of a predicate in actions.py
    replay: bool = True


@dataclass(frozen=True)
class Step:
    name: str
    role: str = BOTH
    actions: tuple = ()
    no_exn: bool = False       # log a failure and carry on
    on_thread: bool = False    # start it and do not wait for it
    pending: str | None = None  # the later work that builds this step for real
    ends_broken_run: bool = False  # a host whose pool.conf is broken stops after this step


DB_ISSUE = "xapi-db issue"
PLATFORM_ISSUE = "platform issue"
API_ISSUE = "xapi-api issue"
SCHED_RRD_ISSUE = "xapi-periodic/xapi-rrd issue"
LIVENESS_MAIL_ISSUE = "xapi-liveness/xapi-mailer issue"
POOL_WORK = "pool work"
HA_WORK = "HA work"

STEPS = (
    Step("Parse command-line arguments", actions=(Local("parse_arguments"),)),
    Step("Read config file", actions=(Local("read_config"),)),
    Step("Initing stunnel path", actions=(Local("init_stunnel_path"),),
         pending=f"{API_ISSUE}: TLS certificate for the management interface"),
    Step("Read log configuration file", actions=(Local("read_log_config"),)),
    Step('Print "server starting" message', actions=(Local("print_starting_message"),)),
    Step("Parse inventory file", actions=(Local("parse_inventory"),)),
    Step("Initialise local database", actions=(Local("init_local_database"),)),
    Step("Read pool secret", actions=(Local("read_pool_secret"),)),
    Step("Initialise licensing", actions=(Local("init_licensing"),)),
    Step("Output xapi version info to the log", actions=(Local("log_version_info"),)),
    Step("Check control domain", actions=(Local("check_control_domain"),)),
    Step("Set signal handlers", actions=(Local("set_signal_handlers"),)),
    Step("Set up xenstore keys", actions=(Local("setup_xenstore_keys"),)),
    Step("Initialise random number generator", actions=(Local("init_random"),)),
    Step("Run startup check", actions=(Local("run_startup_check"),)),
    Step("Register http handlers",
         actions=(StartProgram("xapi-api"), Command("xapi-api", "api.set_boot_state", ("booting",))),
         pending=f"{API_ISSUE}: HTTP handlers"),
    Step("Register RPC callbacks", pending=f"{API_ISSUE}: XenAPI methods from the schema"),
    Step("Start listening on the Unix domain socket used for RPC.",
         pending=f"{API_ISSUE}: api.listen on var/lib/xcp/xapi"),
    Step("Start listening on the localhost Internet socket used for RPC.",
         pending=f"{API_ISSUE}: api.listen on localhost-address:http-port"),
    Step("Start HA if configured",
         actions=(StartProgram("xapi-ha"),),
         pending=f"{HA_WORK}: ha.on_server_restart when local.db ha.armed"),
    Step("Setup DB configuration", actions=(Local("setup_db_conf"),)),
    Step("Start up database engine", role=MASTER,
         actions=(StartProgram("xapi-db"), Command("xapi-db", "db.set_mode", ("master",)),
                  Command("xapi-db", "db.start_engine", replay=False, timeout_s=300.0),
                  Command("xapi-api", "api.set_boot_state", ("ready",))),
         pending=f"{HA_WORK}: tell HA the database is valid"),
    Step("Bring up the management interface",
         pending=f"{API_ISSUE}: api.listen on management-address:https-port"),
    Step("Register SR plugins", actions=(Local("register_sr_plugins"),)),
    Step("Start periodic scheduler", actions=(StartProgram("xapi-periodic"),),
         pending=f"{SCHED_RRD_ISSUE}: the scheduler loop", ends_broken_run=True),
    Step("Log into the master (say hello to pool)", role=SLAVE,
         pending=f"{POOL_WORK}: pool.hello until it answers ok"),
    Step("Update in-memory cache", role=SLAVE,
         actions=(StartProgram("xapi-db"), Command("xapi-api", "api.set_boot_state", ("ready",))),
         pending=f"{POOL_WORK}: xapi-db in slave mode, forwarding to the master"),
    Step("Perform house-keeping on the internal database", actions=(Local("run_dbsync"),),
         pending=f"{SCHED_RRD_ISSUE}: load the host RRD (dbsync sub-step load_host_rrd)"),
    Step("Start database garbage collection thread", role=MASTER,
         actions=(Command("xapi-db", "db.start_gc"),)),
    Step("Check that current license is okay for pooling configuration", no_exn=True,
         actions=(Local("check_license_pooling"),)),
    Step("Set memory target for control domain", on_thread=True,
         actions=(Local("set_dom0_memory_target"),)),
    Step("Start message e-mailing thread", no_exn=True,
         actions=(StartProgram("xapi-mailer"),),
         pending=f"{LIVENESS_MAIL_ISSUE}: message delivery"),
    Step("Start heartbeat thread", no_exn=True, on_thread=True,
         pending=f"{POOL_WORK}: host.tickle_heartbeat every 30 s"),
    Step("Synchronise HA state", no_exn=True,
         pending=f"{HA_WORK}: local ha.armed against pool.ha_enabled"),
    Step("Start pool database backup thread", role=MASTER, on_thread=True,
         pending=f"{POOL_WORK}: push the DB to the slaves"),
    Step("Register database change notifier", role=MASTER,
         actions=(Command("xapi-db", "db.start_events"),)),
    Step("Start monitoring thread", actions=(StartProgram("xapi-rrd"),),
         pending=f"{SCHED_RRD_ISSUE}: the monitoring loop"),
    Step("Start database calls monitoring thread",
         pending=f"{SCHED_RRD_ISSUE}: DB calls monitor"),
    Step("Start guest liveness monitoring thread", actions=(StartProgram("xapi-liveness"),),
         pending=f"{LIVENESS_MAIL_ISSUE}: guest liveness"),
    Step('(Placeholder for touching a "ready" file)', actions=(Local("touch_ready_file"),)),
    Step("Check that there are no other masters in the pool", role=MASTER,
         pending=f"{POOL_WORK}: ask every other host pool.is_slave"),
    Step("Register periodic functions",
         pending=f"{SCHED_RRD_ISSUE}: flush, log rotation, bridge GC, heartbeat, RRD backup"),
    Step("Execute startup scripts", no_exn=True, actions=(Local("run_startup_script"),)),
    Step('Execute scripts in the "master-scripts" directory with param "start"', role=MASTER,
         actions=(Local("run_master_scripts"),)),
    Step('Execute scripts in the "master-scripts" directory with param "stop"', role=SLAVE,
         actions=(Local("run_master_scripts"),)),
    Step("Create networks", role=MASTER,
         pending=f"{PLATFORM_ISSUE}: guest installer network"),
    Step("Bring up physical NICs", no_exn=True, pending=f"{PLATFORM_ISSUE}: PIF plug"),
    Step("Initialise storage", no_exn=True, pending=f"{PLATFORM_ISSUE}: local SR, PBDs"),
    Step("Start events thread", pending=f"{PLATFORM_ISSUE}: domain events in xapi-liveness"),
    Step("Start SR scanning thread", role=MASTER, on_thread=True,
         pending=f"{SCHED_RRD_ISSUE}: SR scanning job"),
    Step("Check / create templates", role=MASTER, pending=f"{PLATFORM_ISSUE}: templates"),
    Step('(Placeholder for touching an "initialisation complete" file)',
         actions=(Local("touch_init_complete_file"),)),
    Step("Establish version of tools VDI", no_exn=True,
         pending=f"{PLATFORM_ISSUE}: tools ISO version"),
    Step("Fetch database backup from master", role=SLAVE, no_exn=True,
         pending=f"{POOL_WORK}: fetch the DB backup"),
    Step("Plug unplugged PBDs", no_exn=True, actions=(Local("enable_host"),),
         pending=f"{PLATFORM_ISSUE}: PBD plug (the host re-enables itself after it)"),
    Step("Consider sending a master transition alert", role=MASTER, no_exn=True,
         actions=(Local("consider_master_transition_alert"),)),
)


def steps_for(role):
    """The steps that run for ``role`` (``master``, ``slave`` or ``broken``); the others show as
    ``skipped``. A broken host runs the role-neutral steps up to the one that ends its run."""
    selected = []
    for step in STEPS:
        if role == "broken":
            if step.role == BOTH:
                selected.append(step)
            if step.ends_broken_run:
                break
        elif step.role in (BOTH, role):
            selected.append(step)
    return selected


def programs_in_start_order(role):
    """The programs the steps for ``role`` start, in order."""
    order = []
    for step in steps_for(role):
        for action in step.actions:
            if isinstance(action, StartProgram) and action.program not in order:
                order.append(action.program)
    return order
