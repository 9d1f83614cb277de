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
    # The step builds xapi-init's own in-memory state (the HostContext: inventory, local.db,
    # pool secret, licence, DB connections): a resumed run, which skips the steps already done,
    # runs it again, or the steps after it would find that state empty.
    rerun_on_resume: bool = False


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
    # TLS is terminated in xapi-api with Python's ssl; its certificate (xapi-ssl.pem) is made
    # by xapi-api at "Bring up the management interface", where the management address is known.
    Step("Initing stunnel path", actions=(Local("init_stunnel_path"),)),
    Step("Read log configuration file", actions=(Local("read_log_config"),),
         rerun_on_resume=True),
    Step('Print "server starting" message', actions=(Local("print_starting_message"),)),
    Step("Parse inventory file", actions=(Local("parse_inventory"),),
         rerun_on_resume=True),
    Step("Initialise local database", actions=(Local("init_local_database"),),
         rerun_on_resume=True),
    Step("Read pool secret", actions=(Local("read_pool_secret"),),
         rerun_on_resume=True),
    Step("Initialise licensing", actions=(Local("init_licensing"),),
         rerun_on_resume=True),
    Step("Output xapi version info to the log", actions=(Local("log_version_info"),)),
    Step("Check control domain", actions=(Local("check_control_domain"),)),
    Step("Set signal handlers", actions=(Local("set_signal_handlers"),)),
    Step("Set up xenstore keys", actions=(Local("setup_xenstore_keys"),)),
    Step("Initialise random number generator", actions=(Local("init_random"),)),
    Step("Run startup check", actions=(Local("run_startup_check"),)),
    Step("Register http handlers",
         actions=(StartProgram("xapi-api"), Command("xapi-api", "api.set_boot_state", ("booting",)))),
    Step("Register RPC callbacks", actions=(Command("xapi-api", "api.register_methods"),)),
    # api.listen names every listener so far (the newest, replayed after a restart, opens them
    # all and never fails); each step checks its own listener with api.check_listener.
    Step("Start listening on the Unix domain socket used for RPC.",
         actions=(Command("xapi-api", "api.listen", ("unix",)),
                  Command("xapi-api", "api.check_listener", ("unix",), replay=False))),
    # no_exn: a host whose localhost port is taken still serves the unix socket
    Step("Start listening on the localhost Internet socket used for RPC.", no_exn=True,
         actions=(Command("xapi-api", "api.listen", ("unix", "localhost")),
                  Command("xapi-api", "api.check_listener", ("localhost",), replay=False))),
    Step("Start HA if configured",
         actions=(StartProgram("xapi-ha"),),
         pending=f"{HA_WORK}: ha.on_server_restart when local.db ha.armed"),
    Step("Setup DB configuration", actions=(Local("setup_db_conf"),),
         rerun_on_resume=True),
    Step("Start up database engine", role=MASTER,
         actions=(StartProgram("xapi-db"), Command("xapi-db", "db.set_mode", ("master",)),
                  Command("xapi-db", "db.start_engine", replay=False, timeout_s=300.0),
                  Command("xapi-api", "api.set_boot_state", ("ready",))),
         pending=f"{HA_WORK}: tell HA the database is valid"),
    # no_exn: a bad certificate or a taken port leaves the host manageable from dom0 (unix
    # socket, localhost) to fix it; the step shows failed with the error naming the file.
    Step("Bring up the management interface", no_exn=True,
         actions=(Command("xapi-api", "api.listen", ("unix", "localhost", "management"),
                          timeout_s=60.0),
                  Command("xapi-api", "api.check_listener", ("management",), replay=False))),
    Step("Register SR plugins", actions=(Local("register_sr_plugins"),)),
    Step("Start periodic scheduler", actions=(StartProgram("xapi-periodic"),),
         ends_broken_run=True),
    Step("Log into the master (say hello to pool)", role=SLAVE,
         pending=f"{POOL_WORK}: pool.hello until it answers ok"),
    Step("Update in-memory cache", role=SLAVE,
         actions=(StartProgram("xapi-db"), Command("xapi-api", "api.set_boot_state", ("ready",))),
         pending=f"{POOL_WORK}: xapi-db in slave mode, forwarding to the master"),
    # xapi-rrd starts here (xcp-rrdd runs before xapi): dbsync's load_host_rrd asks it
    Step("Perform house-keeping on the internal database",
         actions=(StartProgram("xapi-rrd"), Local("run_dbsync"))),
    Step("Start database garbage collection thread", role=MASTER,
         actions=(Command("xapi-db", "db.start_gc"),)),
    Step("Check that current license is okay for pooling configuration", no_exn=True,
         actions=(Local("check_license_pooling"),)),
    Step("Set memory target for control domain", on_thread=True,
         actions=(Local("set_dom0_memory_target"),)),
    Step("Start message e-mailing thread", no_exn=True,
         actions=(StartProgram("xapi-mailer"), Command("xapi-mailer", "mail.start"))),
    Step("Start heartbeat thread", no_exn=True, on_thread=True,
         pending=f"{POOL_WORK}: host.tickle_heartbeat every 30 s"),
    Step("Synchronise HA state", no_exn=True,
         pending=f"{HA_WORK}: local ha.armed against pool.ha_enabled"),
    Step("Start pool database backup thread", role=MASTER, on_thread=True,
         pending=f"{POOL_WORK}: push the DB to the slaves"),
    Step("Register database change notifier", role=MASTER,
         actions=(Command("xapi-db", "db.start_events"),)),
    Step("Start monitoring thread", actions=(Command("xapi-rrd", "rrd.start_monitor"),)),
    Step("Start database calls monitoring thread",
         actions=(Command("xapi-rrd", "rrd.start_dbcalls_monitor"),)),
    Step("Start guest liveness monitoring thread",
         actions=(StartProgram("xapi-liveness"),
                  Command("xapi-liveness", "liveness.start_guest_liveness"))),
    Step('(Placeholder for touching a "ready" file)', actions=(Local("touch_ready_file"),)),
    Step("Check that there are no other masters in the pool", role=MASTER,
         pending=f"{POOL_WORK}: ask every other host pool.is_slave"),
    # the jobs themselves are xapi-periodic's table (daemons/periodic/jobs.py)
    Step("Register periodic functions",
         actions=(Command("xapi-periodic", "periodic.register_startup_jobs"),),
         pending=f"{PLATFORM_ISSUE}: bridge-gc (no OS bridges are made here); {POOL_WORK}: "
                 f"blob-sync, the other hosts' RRD backup"),
    Step("Execute startup scripts", no_exn=True, actions=(Local("run_startup_script"),)),
    Step('Execute scripts in the "master-scripts" directory with param "start"', role=MASTER,
         actions=(Local("run_master_scripts"),)),
    Step('Execute scripts in the "master-scripts" directory with param "stop"', role=SLAVE,
         actions=(Local("run_master_scripts"),)),
    Step("Create networks", role=MASTER, actions=(Local("create_networks"),)),
    Step("Bring up physical NICs", no_exn=True, actions=(Local("bring_up_physical_nics"),)),
    Step("Initialise storage", no_exn=True, actions=(Local("initialise_storage"),)),
    Step("Start events thread", actions=(Command("xapi-liveness", "liveness.start_events"),)),
    # xapi's scanning thread is the job "sr-scan" of xapi-periodic's table (registered by
    # "Register periodic functions"); this step runs its first pass now (it fails if the job
    # is not registered, or if an SR marked auto-scan or dirty cannot be scanned)
    Step("Start SR scanning thread", role=MASTER, on_thread=True,
         actions=(Command("xapi-periodic", "periodic.run_now", ("sr-scan",), replay=False),)),
    Step("Check / create templates", role=MASTER, actions=(Local("create_templates"),)),
    Step('(Placeholder for touching an "initialisation complete" file)',
         actions=(Local("touch_init_complete_file"),)),
    Step("Establish version of tools VDI", no_exn=True,
         actions=(Local("establish_tools_version"),)),
    Step("Fetch database backup from master", role=SLAVE, no_exn=True,
         pending=f"{POOL_WORK}: fetch the DB backup"),
    Step("Plug unplugged PBDs", no_exn=True,
         actions=(Local("plug_unplugged_pbds"), Local("enable_host"))),
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
