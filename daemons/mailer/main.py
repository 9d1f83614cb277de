"""xapi-mailer: message e-mailing (xapi's "message e-mailing thread").

The command ``mail.start`` (sent by the start-up step "Start message e-mailing thread", replayed
after every restart) makes the master's mailer follow new messages from xapi-db and deliver its
outbox; on a slave it does nothing (the master mails the pool's messages, as in xapi, where
message.create runs on the master). ``mail.queue`` lists the outbox, ``mail.test`` sends a test
e-mail at once with the pool's settings. The pieces: subscribe.py (the events), outbox.py,
fold.py (repeats), compose.py, deliver.py, smtp.py, hook.py, pool.py (settings), state.py.
"""

import asyncio
import concurrent.futures
import socket
import time
import uuid as uuidlib
from datetime import datetime, timezone

from common.daemon import EXIT_ERROR, Daemon
from common.errors import ConfigError, XapiError
from common.rpc import AsyncRpcClient
from daemons.mailer import compose, hook
from daemons.mailer.deliver import Delivery
from daemons.mailer.fold import RepeatFolder
from daemons.mailer.outbox import Outbox
from daemons.mailer.pool import PoolReader
from daemons.mailer.settings import parse_addresses
from daemons.mailer.smtp import DeliveryError, SmtpTransport, default_local_hostname
from daemons.mailer.state import MailerState
from daemons.mailer.subscribe import Follower

FQDN_WAIT_S = 2.0
COUNTERS = ("messages_seen", "below_min_priority", "no_destination", "folded", "sent",
            "hooks_run", "failures")


class MailerDaemon(Daemon):
    """Message e-mailing: new messages at or above the pool's mail-min-priority go out by SMTP
    (or to xapi-message-script), through a durable outbox."""

    program = "xapi-mailer"

    async def setup(self):
        connections = self.config["mail-smtp-connections"]
        if connections < 1:
            raise ConfigError(f"must be at least 1, got {connections}",
                              path=self.config.source("mail-smtp-connections"),
                              key="mail-smtp-connections")
        self.io_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="io")
        # one thread per delivery connection, and one for `mail test`
        self.send_executor = concurrent.futures.ThreadPoolExecutor(
            connections + 1, thread_name_prefix="send")
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.db = AsyncRpcClient(self.paths.rpc_endpoint("xapi-db"))
        self.outbox = Outbox(self.paths.mailer_outbox, self.config["mail-outbox-max"], self.log)
        self.mstate = MailerState(self.paths.mailer_state)
        try:
            self.mstate.load()
        except ConfigError as exc:
            # The token is gone: follow from now on (mailing the whole history would flood the
            # operator); the outbox is kept. Said loudly, the bad file kept aside.
            aside = self.paths.mailer_state.with_name(f"mailer.state.bad-{int(time.time())}")
            self.paths.mailer_state.rename(aside)
            self.log.error("%s; moved to %s: following messages from now on", exc, aside)
        loaded = await self.io(self.outbox.load)
        self.folder = RepeatFolder(self.mstate.windows)
        for entry in self.outbox.entries.values():
            if entry["kind"] == "fold":
                self.folder.adopt(tuple(entry["fold"]["key"]), entry)
        self.log.info("mailer: %d entr%s in the outbox %s", loaded, "y" if loaded == 1 else "ies",
                      self.paths.mailer_outbox)
        self.pool = PoolReader(self.db, self.log)
        self.transports = [SmtpTransport(self.config["mail-smtp-timeout"], self.paths.under)
                           for _ in range(connections)]
        self.test_transport = SmtpTransport(self.config["mail-smtp-timeout"], self.paths.under)
        self.delivery = Delivery(
            self.outbox, self.pool, self.transports, self.in_send_thread, self.io,
            self.hook_path, self.config["mail-hook-timeout"], self.paths.root,
            self.config["mail-retry-initial"], self.config["mail-retry-max"], self.log,
            self.counters, on_pick=self._picked)
        self.follower = Follower(
            self.db, self.pool, self.outbox, self.mstate, self.folder, self.io, self.hook_path,
            self.config["mail-events-wait"], self.log, self.delivery.wake, self.counters)
        self.tasks = []
        self.following = False
        self._fatal = None
        self._hook_warned = None
        self._fqdn_known = False
        self.register("mail.start", self.start, command=True)
        self.register("mail.queue", self.queue)
        self.register("mail.test", self.test)

    # -- helpers -------------------------------------------------------------------------------
    async def io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io_executor, fn, *args)

    async def in_send_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.send_executor, fn, *args)

    def hook_path(self):
        """The xapi-message-script to run (a dom0 path under ROOT), or None: not set, or not
        an executable file (said once in the log)."""
        name = self.config["xapi-message-script"]
        if not name:
            return None
        path = self.paths.under(name)
        if hook.usable(path):
            self._hook_warned = None
            return path
        if self._hook_warned != str(path):
            self._hook_warned = str(path)
            self.log.warning("xapi-message-script %s (%s) is not an executable file: mailing "
                             "by SMTP instead", name, path)
        return None

    def _picked(self, entry):
        if entry["kind"] == "fold":
            self.folder.closed(tuple(entry["fold"]["key"]), entry)

    async def _learn_fqdn(self):
        """The default sender's domain and the EHLO name, looked up once."""
        if not self._fqdn_known:
            fqdn = await self._local_hostname()
            self.pool.fqdn = fqdn
            for transport in (*self.transports, self.test_transport):
                transport.local_hostname = fqdn
            self._fqdn_known = True

    async def _local_hostname(self):
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, default_local_hostname)
        try:
            return await asyncio.wait_for(asyncio.shield(future), FQDN_WAIT_S)
        except asyncio.TimeoutError:
            self.log.warning("mailer: the host's FQDN took over %g s to look up: using %s",
                             FQDN_WAIT_S, socket.gethostname())
            return socket.gethostname() or "localhost"

    # -- commands and methods ----------------------------------------------------------------
    async def start(self):
        """Command: follow new messages and deliver the outbox (on the master)."""
        if self.role != "master":
            return {"following": False,
                    "reason": f"this host is {self.role or 'without a role'}: the master's "
                              "xapi-mailer mails the pool's messages"}
        if not self.following:
            await self._learn_fqdn()
            await self.follower.prepare()
            self.following = True
            loop = asyncio.get_running_loop()
            for name, coro in (("follow", self.follower.run()), ("deliver", self.delivery.run())):
                task = loop.create_task(coro, name=name)
                task.add_done_callback(self._task_done)
                self.tasks.append(task)
        return {"following": True, "token": self.mstate.token, "outbox": len(self.outbox)}

    def _task_done(self, task):
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Crash-only: the state on disk is the truth; supervisord restarts us and xapi-init
            # replays mail.start, which catches up from the saved token.
            self.log.error("mailer: the %s task failed: %r; exiting to start again from the "
                           "saved state", task.get_name(), exc,
                           exc_info=(type(exc), exc, exc.__traceback__))
            self._fatal = exc
            self._stop.set()

    def queue(self):
        """The outbox: a summary and every entry, oldest first."""
        now = time.time()
        entries = [self.delivery.describe(e, now)
                   for e in sorted((*self.outbox.entries.values(),
                                    *self.outbox.staged.values()), key=lambda e: e["seq"])]
        return {"following": self.following, "entries": entries, "count": len(entries),
                "cap": self.outbox.cap, "shed": self.outbox.shed,
                "held_for_s": round(max(0.0, self.delivery.blocked_until - now), 3),
                "last_error": self.delivery.last_error, "token": self.mstate.token}

    async def test(self, to=None):
        """Send a test e-mail now, with the pool's settings, to ``to`` (default the pool's
        mail-destination); returns where it went, or fails with MAIL_TEST_FAILED and why."""
        await self._learn_fqdn()
        settings = await self.pool.settings()
        recipients = list(settings.destination)
        if to:
            recipients, bad = parse_addresses(str(to))
            if bad or not recipients:
                raise XapiError("MAIL_TEST_FAILED", f"not an e-mail address: {to!r}")
        if not recipients:
            raise XapiError("MAIL_TEST_FAILED",
                            "no recipient: set the pool's other_config mail-destination or "
                            "give one")
        now = datetime.now(timezone.utc)
        entry = {"kind": "mail", "sender": settings.sender, "to": recipients,
                 "charset": settings.charset, "pool_name": settings.pool_name,
                 "obj_name": settings.pool_name,
                 "message": {"ref": "", "uuid": str(uuidlib.uuid4()), "name": "MAIL_TEST",
                             "priority": 5, "cls": "Pool", "obj_uuid": "",
                             "timestamp": compose.xapi_timestamp(now),
                             "body": "A test e-mail sent by `xapi-ctl mail test`: the pool's "
                                     "mail settings work."}}
        mail = compose.compose(entry)
        try:
            refused = await self.in_send_thread(self.test_transport.send, settings,
                                                settings.sender, recipients, mail.data)
        except DeliveryError as exc:
            raise XapiError("MAIL_TEST_FAILED", str(exc)) from None
        finally:
            await self.in_send_thread(self.test_transport.close)
        host, port = settings.mailhub
        return {"to": recipients, "from": settings.sender, "mailhub": f"{host}:{port}",
                "message_id": mail["Message-ID"], "refused": refused,
                "starttls": settings.starttls, "tls": settings.tls,
                "login": settings.auth_user}

    def stats(self):
        stats = super().stats()
        stats.update(self.counters)
        stats.update({"outbox": len(self.outbox), "outbox_cap": self.outbox.cap,
                      "shed": self.outbox.shed, "outbox_corrupt": self.outbox.corrupt,
                      "following": self.following, "batches": self.follower.batches,
                      "token": self.mstate.token,
                      "smtp_connects": sum(t.connects for t in self.transports),
                      "smtp_connections": len(self.transports),
                      "last_error": self.delivery.last_error,
                      "busy_s": {**{k: round(v, 3) for k, v in self.follower.timing.items()},
                                 "deliver_s": round(self.delivery.send_s, 3)}})
        return stats

    def health(self):
        health = super().health()
        health["following"] = self.following
        health["outbox"] = len(self.outbox)
        return health

    # -- life cycle ----------------------------------------------------------------------------
    async def serve(self):
        await self._stop.wait()
        return EXIT_ERROR if self._fatal is not None else 0

    async def teardown(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for transport in (*self.transports, self.test_transport):
            await self.in_send_thread(transport.close)
        self.db.close()
        self.io_executor.shutdown(wait=True)
        self.outbox.close()
        self.send_executor.shutdown(wait=True)


main = MailerDaemon.main
