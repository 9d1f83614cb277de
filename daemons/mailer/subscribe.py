"""Following new messages: xapi-db's ``db.events_since(["message"], token, wait)`` is a long
poll (xapi's event.from) that returns as soon as a message is created, so the mailer neither
busy-polls nor misses a wake-up; ``mail-events-wait`` bounds each wait (the fallback poll, and the
longest a restarted xapi-db keeps the mailer waiting). xapi-db's PUB hints are not used: a
message creation publishes none, and the long poll wakes on exactly that.

Each batch: the messages above the saved generation are filtered, composed into outbox entries
(or folded into a pending one), the entries are written, then the token is saved, then the
entries become visible to delivery. A crash between two of these steps replays the batch: an
entry already on disk (its generation is at most the outbox's newest) is not made again.
``EVENTS_LOST`` (xapi-db forgot deletions older than our token, e.g. after its restart) is
answered by reading every message and taking those above the saved generation.
"""

import asyncio
import time

from common.errors import RpcTimeout, XapiError
from daemons.mailer import compose
from daemons.mailer.fold import FOLD_INTO, FOLD_NEW, MAIL
from daemons.mailer.state import message_generation

RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0
CALL_MARGIN_S = 10.0


def message_fields(event):
    """The message of an ``add`` event as the outbox keeps it."""
    snap = event["snapshot"]
    return {"ref": event["ref"], "uuid": snap["uuid"], "name": snap["name"],
            "priority": snap["priority"], "cls": snap["cls"], "obj_uuid": snap["obj_uuid"],
            "timestamp": compose.xapi_timestamp(snap["timestamp"]), "body": snap["body"]}


class Follower:
    def __init__(self, db, pool, outbox, state, folder, io, hook_path, wait_s, log, wake,
                 counters):
        self.db = db
        self.pool = pool
        self.outbox = outbox
        self.state = state
        self.folder = folder
        self.io = io                  # async fn(callable, *args): runs it in the I/O thread
        self.hook_path = hook_path    # () -> Path of a usable xapi-message-script, or None
        self.wait_s = wait_s
        self.log = log
        self.wake = wake
        self.counters = counters
        self.batches = 0
        self.replay_floor = 0   # until the first batch: entries already made before a crash
        self.timing = {"stage_s": 0.0, "write_s": 0.0, "save_s": 0.0}

    async def prepare(self):
        """Start from the saved token; the first time ever, from xapi-db's token now (xapi
        mails the messages created once its hook thread runs, not the history)."""
        self.replay_floor = self.outbox.max_generation
        if self.state.token is None:
            self.state.token = await self.db.call("db.token", timeout_s=CALL_MARGIN_S,
                                                  retries=2)
            self.state.generation = message_generation(self.state.token)
            await self.io(self.state.save)
            self.log.info("mailer: no saved token: following messages from generation %d on",
                          self.state.generation)
        else:
            self.log.info("mailer: catching up from the saved token %s", self.state.token)

    async def run(self):
        delay = RETRY_MIN_S
        while True:
            try:
                result = await self.db.call("db.events_since", ["message"], self.state.token,
                                            self.wait_s, timeout_s=self.wait_s + CALL_MARGIN_S)
            except RpcTimeout:
                self.log.info("mailer: xapi-db did not answer db.events_since; asking again")
                continue
            except XapiError as exc:
                if exc.code == "EVENTS_LOST":
                    await self._resync()
                    delay = RETRY_MIN_S
                    continue
                self.log.error("mailer: db.events_since failed: %s; again in %.1f s", exc,
                               delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            delay = RETRY_MIN_S
            await self.take(result["events"], result["token"])

    async def _resync(self):
        result = await self.db.call("db.events_since", ["message"], "", 0,
                                    timeout_s=CALL_MARGIN_S, retries=1)
        now_generation = message_generation(result["token"])
        if now_generation < self.state.generation:
            self.log.warning("mailer: xapi-db's message generation went back from %d to %d "
                             "(its message store was reset?): following from %d",
                             self.state.generation, now_generation, now_generation)
            self.state.generation = now_generation
        else:
            self.log.warning("mailer: events lost since token %s: read every message and "
                             "took those above generation %d", self.state.token,
                             self.state.generation)
        await self.take(result["events"], result["token"])

    async def take(self, events, token):
        """One batch: outbox entries for the new messages, then the token, then delivery."""
        generation = message_generation(token)
        floor = max(self.state.generation, self.replay_floor)
        new = [e for e in events if e["operation"] == "add" and int(e["id"]) > floor]
        new.sort(key=lambda e: int(e["id"]))
        written, removed = [], []
        started = time.monotonic()
        if new:
            written, removed = await self._stage(new)
        staged = time.monotonic()
        self.timing["stage_s"] += staged - started
        if not new and generation == self.state.generation:
            self.state.token = token
            return
        try:
            if written or removed:
                await self.io(self.outbox.write, written, removed)
            wrote = time.monotonic()
            self.timing["write_s"] += wrote - staged
            self.state.token = token
            self.state.generation = generation
            self.state.windows = self.folder.windows()
            await self.io(self.state.save)
            self.timing["save_s"] += time.monotonic() - wrote
        except BaseException:
            self.outbox.discard_staged()
            raise
        self.outbox.commit()
        self.replay_floor = 0
        self.batches += 1
        if written:
            self.wake()

    async def _stage(self, events):
        """Outbox entries for ``events``: new ones staged, pending fold entries updated.
        -> (entries to write, seqs of committed entries shed)."""
        hook = self.hook_path()
        self.pool.new_batch()
        settings = await self._settings_and_names(events, hook)
        now = time.time()
        self.folder.prune(now, settings.inhibit_s)
        to_write, removed = {}, []
        skipped_no_destination = 0
        for event in events:
            msg = message_fields(event)
            gen = int(event["id"])
            self.counters["messages_seen"] += 1
            if hook is not None:
                entry = self._entry("hook", msg, gen, now)
            else:
                if not msg["priority"] <= settings.min_priority:
                    self.counters["below_min_priority"] += 1
                    continue
                if not settings.destination:
                    skipped_no_destination += 1
                    continue
                key = (msg["name"], msg["cls"], msg["obj_uuid"])
                stamp = (compose.parse_xapi_timestamp(msg["timestamp"]).timestamp()
                         if settings.inhibit_s > 0 else 0.0)     # no folding: not needed
                decision, arg = self.folder.decide(key, stamp, settings.inhibit_s, now)
                if decision == FOLD_INTO:
                    await self._refold(arg, msg, gen, settings)
                    to_write[arg["seq"]] = arg
                    self.counters["folded"] += 1
                    continue
                entry = await self._mail_entry(msg, gen, now, settings)
                if decision == FOLD_NEW:
                    entry["kind"] = "fold"
                    entry["due"] = arg
                    entry["fold"] = {"count": 1, "first": msg["timestamp"],
                                     "last": msg["timestamp"], "first_uuid": msg["uuid"],
                                     "inhibit_s": settings.inhibit_s, "key": list(key)}
                    self.folder.opened(key, entry)
                    self.counters["folded"] += 1
                assert decision in (MAIL, FOLD_NEW)
            shed = self.outbox.stage(entry)
            to_write[entry["seq"]] = entry
            for victim, was_committed in shed:
                to_write.pop(victim["seq"], None)
                if was_committed:
                    removed.append(victim["seq"])
                if victim["kind"] == "fold":
                    self.folder.closed(tuple(victim["fold"]["key"]), victim)
        if skipped_no_destination:
            self.counters["no_destination"] += skipped_no_destination
            self.log.info("mailer: %d message(s) at or above the priority to mail not mailed: "
                          "the pool's other_config has no valid mail-destination",
                          skipped_no_destination)
        return list(to_write.values()), removed

    async def _settings_and_names(self, events, hook):
        """The settings, read at the same time as the names of the objects of the messages
        that the settings last read would mail (a guess: a name missed is read when needed)."""
        last = self.pool.last_settings
        keys = []
        if hook is None and (last is None or last.destination):
            keys = [(e["snapshot"]["cls"], e["snapshot"]["obj_uuid"]) for e in events
                    if last is None or e["snapshot"]["priority"] <= last.min_priority]
        if not keys:
            return await self.pool.settings()
        settings, names = await asyncio.gather(self.pool.settings(),
                                               self.pool.prefetch_names(keys),
                                               return_exceptions=True)
        for outcome in (settings, names):
            if isinstance(outcome, BaseException):
                raise outcome
        return settings

    def _entry(self, kind, msg, generation, now):
        return {"seq": None, "kind": kind, "due": now, "queued_at": now,
                "generation": generation, "message": msg}

    async def _mail_entry(self, msg, generation, now, settings):
        entry = self._entry("mail", msg, generation, now)
        entry.update({
            "obj_name": await self.pool.object_name(msg["cls"], msg["obj_uuid"],
                                                    settings.pool_name),
            "pool_name": settings.pool_name, "sender": settings.sender,
            "to": list(settings.destination), "charset": settings.charset})
        return entry

    async def _refold(self, entry, msg, generation, settings):
        """One more repeat in a pending fold entry: it counts it and shows the latest."""
        entry["fold"]["count"] += 1
        entry["fold"]["last"] = msg["timestamp"]
        entry["message"] = msg
        entry["generation"] = generation
        entry["obj_name"] = await self.pool.object_name(msg["cls"], msg["obj_uuid"],
                                                        settings.pool_name)
