"""Repeat control: one message name raised again and again for one object within the pool's
``mail-inhibit-period`` gives one e-mail at once and then one e-mail per period that counts the
repeats (a ``fold`` entry, due at the end of the period), instead of one e-mail each.

Time is the messages' own timestamps, so replaying a batch after a crash decides the same way;
the window of each (name, class, object) is saved with the event token in mailer.state.
"""

MAIL, FOLD_NEW, FOLD_INTO = "mail", "fold_new", "fold_into"


class RepeatFolder:
    def __init__(self, windows=None):
        self.last_mail = dict(windows or {})   # key -> time of the last e-mail (sent or due)
        self.open = {}                         # key -> fold entry still collecting repeats

    def decide(self, key, t, period, now):
        """-> (MAIL, None) | (FOLD_NEW, due) | (FOLD_INTO, entry) for a message of ``key``
        stamped ``t``; ``now`` is the wall clock (an entry due by then is not reopened)."""
        if period <= 0:
            return MAIL, None
        entry = self.open.get(key)
        if entry is not None and not entry.get("closed") and entry["due"] > max(t, now):
            return FOLD_INTO, entry
        last = self.last_mail.get(key)
        if last is None or t >= last + period:
            self.last_mail[key] = t
            return MAIL, None
        due = last + period
        self.last_mail[key] = due
        return FOLD_NEW, due

    def opened(self, key, entry):
        self.open[key] = entry

    def closed(self, key, entry):
        if self.open.get(key) is entry:
            del self.open[key]

    def adopt(self, key, entry):
        """A fold entry found in the outbox at start: it collects repeats again until due, and
        the window runs at least to its due time."""
        self.open[key] = entry
        self.last_mail[key] = max(self.last_mail.get(key, entry["due"]), entry["due"])

    def prune(self, now, period):
        """Forget windows that can no longer fold anything."""
        for key in [k for k, last in self.last_mail.items() if last + period < now]:
            if key not in self.open:
                del self.last_mail[key]

    def windows(self):
        return dict(self.last_mail)
