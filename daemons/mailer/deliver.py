"""Delivery: the outbox drained oldest first (a fold entry once its period is over) over up
to ``mail-smtp-connections`` SMTP connections at once, each carrying a different entry, or by
xapi-message-script. An entry leaves the outbox only once the server accepted it (or the script
exited 0), so a crash repeats at most the entries in flight, one per connection, each with its
stable Message-ID.

Retries: a failure that concerns the server (unreachable, refusing everything, a failing hook
script) holds the whole outbox for a capped exponential delay (mail-retry-initial doubling to
mail-retry-max, with jitter), then one entry probes the server alone until one is accepted, so a
dead server is not hammered (the other deliveries in flight when it failed count as the same
failure); a refusal of this one e-mail (a 5xx to its sender, recipients or data) holds only that
entry, on the same scale, and the others go on. Every failure is logged with its cause and
counted; nothing is dropped.
"""

import asyncio
import random
import time

from common.aio import wait_event
from common.errors import XapiError
from daemons.mailer import compose
from daemons.mailer.hook import run_hook
from daemons.mailer.smtp import DeliveryError

SETTINGS_MAX_AGE_S = 2.0     # settings read at most this long ago will do for one delivery
IDLE_CLOSE_S = 5.0           # an SMTP connection unused this long is closed
MAX_SLEEP_S = 60.0


class Delivery:
    def __init__(self, outbox, pool, transports, run_blocking, io, hook_path, hook_timeout_s,
                 root, retry_initial_s, retry_max_s, log, counters, on_pick=None):
        if not transports:
            raise ValueError("delivery needs at least one transport")
        self.outbox = outbox
        self.pool = pool
        self.transports = list(transports)   # one per connection: each used by one delivery
        self.run_blocking = run_blocking   # async fn(callable, *args) in a delivery thread
        self.io = io
        self.hook_path = hook_path
        # xapi runs xapi-message-script for one message at a time, in order: so do we, even
        # with several SMTP connections (asyncio.Lock hands over in the order of the waiters)
        self._hook_lock = asyncio.Lock()
        self.hook_timeout_s = hook_timeout_s
        self.root = root
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.log = log
        self.counters = counters
        self.on_pick = on_pick or (lambda entry: None)
        self.event = asyncio.Event()
        self.failures = 0             # consecutive failures that hold the whole outbox
        self.blocked_until = 0.0
        self.held_at = 0.0            # when the last hold began (monotonic)
        self.last_error = None
        self.per_entry = {}           # seq -> {"attempts", "last_error", "next_at"}
        self.idle = list(range(len(self.transports)))   # transports not delivering now
        self._last_used = [0.0] * len(self.transports)
        self._tasks = set()
        self.send_s = 0.0             # time spent in delivery calls (for sys.stats)

    def wake(self):
        self.event.set()

    def backoff_s(self, attempts):
        delay = min(self.retry_max_s, self.retry_initial_s * 2 ** min(attempts - 1, 40))
        return delay * random.uniform(0.75, 1.0)

    @property
    def width(self):
        """Deliveries allowed at once: every connection, or one probe while the server is
        failing."""
        return 1 if self.failures else len(self.transports)

    async def run(self):
        try:
            while True:
                self.event.clear()
                now = time.time()
                if now < self.blocked_until:
                    await self._sleep(self.blocked_until - now)
                    continue
                if not self.idle or len(self.outbox.in_flight) >= self.width:
                    await self._sleep(MAX_SLEEP_S)     # a delivery ending wakes us
                    continue
                skip = {seq for seq, st in self.per_entry.items() if st["next_at"] > now}
                entry, wait_s = self.outbox.next_ready(now, skip | self.outbox.in_flight)
                if entry is not None:
                    index = self._begin(entry)
                    task = asyncio.get_running_loop().create_task(self._deliver(entry, index))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    continue
                waits = [w for w in [wait_s] if w is not None]
                waits += [st["next_at"] - now for st in self.per_entry.values()
                          if st["next_at"] > now]
                sleep_s = min(waits + [MAX_SLEEP_S])
                closing = False
                for index in list(self.idle):
                    if not self.transports[index].connected:
                        continue
                    idle_left = self._last_used[index] + IDLE_CLOSE_S - now
                    if idle_left <= 0:
                        await self.run_blocking(self.transports[index].close)
                        closing = True
                    else:
                        sleep_s = min(sleep_s, idle_left)
                if not closing:
                    await self._sleep(sleep_s)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sleep(self, seconds):
        """Until woken or ``seconds`` pass."""
        await wait_event(self.event, seconds)

    def _begin(self, entry):
        """Mark ``entry`` in flight on an idle transport; returns the transport's index."""
        index = self.idle.pop()
        self.outbox.in_flight.add(entry["seq"])
        entry["closed"] = True     # a fold entry counts no more repeats from now on
        self.on_pick(entry)
        return index

    async def deliver(self, entry):
        """Deliver one entry now (on an idle transport) and wait for the outcome."""
        await self._deliver(entry, self._begin(entry))

    async def _deliver(self, entry, index):
        seq = entry["seq"]
        started = time.monotonic()
        try:
            how = await self._send(entry, index)
        except DeliveryError as exc:
            self._failed(entry, exc, started)
            return
        except XapiError as exc:   # the settings could not be read from xapi-db
            self._failed(entry, DeliveryError(f"cannot read the pool's mail settings: {exc}"),
                         started)
            return
        except Exception as exc:   # noqa: BLE001 - a bug must not stop delivery of the rest
            self.log.exception("mailer: entry %d cannot be delivered", seq)
            self._failed(entry, DeliveryError(f"internal error: {exc}", per_message=True),
                         started)
            return
        finally:
            self.outbox.in_flight.discard(seq)
            self.idle.append(index)
            self.send_s += time.monotonic() - started
            self.event.set()
        self.outbox.forget(seq)
        self.per_entry.pop(seq, None)
        if started >= self.held_at:   # not a delivery begun before the server last failed
            self.failures = 0
            self.blocked_until = 0.0
        self.counters["hooks_run" if entry["kind"] == "hook" else "sent"] += 1
        msg = entry["message"]
        self.log.info("mailer: %s %s %s (%s %s) delivered: %s", entry["kind"], msg["name"],
                      msg["uuid"], msg["cls"], msg["obj_uuid"], how)

    async def _send(self, entry, index):
        if entry["kind"] == "hook":
            path = self.hook_path()
            if path is None:
                raise DeliveryError("xapi-message-script is no longer an executable file")
            async with self._hook_lock:
                out = await self.run_blocking(self._hook_and_remove, path, entry)
            return f"{path} exited 0" + (f", output {out.strip()[:200]!r}" if out.strip() else "")
        settings = await self.pool.settings(max_age_s=SETTINGS_MAX_AGE_S)
        mail = compose.compose(entry)
        refused = await self.run_blocking(self._send_and_remove, self.transports[index],
                                          settings, entry, mail.data)
        self._last_used[index] = time.time()
        host, port = settings.mailhub
        if refused:
            self.log.warning("mailer: %s: %s refused by %s:%s (the others accepted it)",
                             mail["Message-ID"], ", ".join(refused), host, port)
        return f"{mail['Message-ID']} to {', '.join(entry['to'])} accepted by {host}:{port}"

    def _send_and_remove(self, transport, settings, entry, data):
        """In a delivery thread: send, and once accepted remove the entry's file at once
        (written before the entry was committed, so no write of it can still be pending)."""
        refused = transport.send(settings, entry["sender"], entry["to"], data)
        self.outbox.remove(entry["seq"])
        return refused

    def _hook_and_remove(self, path, entry):
        out = run_hook(path, compose.message_xml(entry["message"]), self.hook_timeout_s,
                       self.root)
        self.outbox.remove(entry["seq"])
        return out

    def _failed(self, entry, exc, started):
        now = time.time()
        seq = entry["seq"]
        state = self.per_entry.setdefault(seq, {"attempts": 0, "last_error": None,
                                                "next_at": 0.0})
        state["attempts"] += 1
        state["last_error"] = str(exc)
        self.last_error = str(exc)
        self.counters["failures"] += 1
        msg = entry["message"]
        if exc.per_message:
            delay = self.backoff_s(state["attempts"])
            state["next_at"] = now + delay
            self.log.warning("mailer: %s %d (message %s %s) failed, attempt %d: %s; this entry "
                             "is retried in %.1f s", entry["kind"], seq, msg["uuid"],
                             msg["name"], state["attempts"], exc, delay)
            return
        if started < self.held_at:
            # begun before the server last failed: the same outage, already held for
            self.log.warning("mailer: %s %d (message %s %s) failed, attempt %d: %s; the outbox "
                             "is already held", entry["kind"], seq, msg["uuid"], msg["name"],
                             state["attempts"], exc)
            return
        self.failures += 1
        delay = self.backoff_s(self.failures)
        self.blocked_until = now + delay
        self.held_at = time.monotonic()
        self.log.warning("mailer: %s %d (message %s %s) failed, attempt %d: %s; the outbox "
                         "(%d entries) waits %.1f s", entry["kind"], seq, msg["uuid"],
                         msg["name"], state["attempts"], exc, len(self.outbox), delay)

    def describe(self, entry, now):
        """One outbox entry for `xapi-ctl mail queue`."""
        msg = entry["message"]
        state = self.per_entry.get(entry["seq"], {})
        next_at = max(entry["due"], state.get("next_at", 0.0), self.blocked_until)
        item = {"seq": entry["seq"], "kind": entry["kind"], "message_uuid": msg["uuid"],
                "name": msg["name"], "priority": msg["priority"], "cls": msg["cls"],
                "obj_uuid": msg["obj_uuid"], "to": entry.get("to", []),
                "age_s": round(now - entry.get("queued_at", now), 3),
                "attempts": state.get("attempts", 0), "last_error": state.get("last_error"),
                "next_attempt_in_s": round(max(0.0, next_at - now), 3),
                "in_flight": entry["seq"] in self.outbox.in_flight}
        if entry["kind"] == "fold":
            item["repeats"] = entry["fold"]["count"]
        return item
