"""event.from over the store and the message store: tokens, add/mod/del, class filters.

A token is ``"%020d,%020d"``: the DB generation and the message generation the caller has seen;
``""`` means from the start (every object as ``add``). A row stamped above the token's DB half
is ``add`` when it was created above it, else ``mod``; a deletion above it is ``del``, unless the
row was also created above it (created and deleted inside the window: nothing).
"""

import time

from common import schema
from common.errors import XapiError

TOKEN_FORMAT = "%020d,%020d"


def parse_token(token):
    """-> (db generation, message generation), or (None, None) for the start."""
    if token in ("", None):
        return None, None
    if not isinstance(token, str):
        raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", repr(token))
    db_part, sep, msg_part = token.partition(",")
    try:
        return int(db_part), (int(msg_part) if sep else 0)
    except ValueError:
        raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token) from None


def make_token(db_generation, message_generation):
    # The DB half of an empty database is -1 ("-0000000000000000001", as xapi's %020Ld): the
    # first row is stamped 0, and a token of 0 would never show it.
    return TOKEN_FORMAT % (max(-1, db_generation), max(0, message_generation))


def parse_classes(classes):
    """``*``, ``vm``, ``vm/OpaqueRef:...`` -> {class name: None (all rows) or set of refs};
    and whether messages are wanted."""
    if isinstance(classes, str):
        classes = [classes]
    wanted, messages = {}, False
    for item in classes:
        name, _, ref = str(item).partition("/")
        if name == "*":
            for cls_name in schema.CLASSES:
                wanted[cls_name] = None
            messages = True
            continue
        if name.lower() == "message":
            messages = True
            continue
        try:
            cls = schema.get_class(name)
        except KeyError:
            raise XapiError("EVENT_SUBSCRIPTION_PARSE_FAILURE", str(item)) from None
        if ref:
            if wanted.get(cls.name, set()) is not None:
                wanted.setdefault(cls.name, set()).add(ref)
        else:
            wanted[cls.name] = None
    return wanted, messages


def _event(stamp, cls_name, op, ref, snapshot, now):
    return {"id": str(stamp), "timestamp": now, "class": cls_name.lower(), "operation": op,
            "ref": ref, "snapshot": snapshot}


def collect(store, wanted, since):
    """DB events above ``since`` (None: every row as add), oldest first."""
    now = "%.6f" % time.time()
    events = []
    for cls_name, refs in wanted.items():
        table = store.tables[cls_name]
        for ref, row in table.rows.items():
            if refs is not None and ref not in refs:
                continue
            if since is None or row.modified > since:
                op = "add" if since is None or row.created > since else "mod"
                events.append((row.modified, _event(row.modified, cls_name, op, ref,
                                                    store.record_of_row(table, row), now)))
        if since is not None:
            for stamp, created, ref, snapshot in table.deleted:
                if stamp > since and created <= since and (refs is None or ref in refs):
                    events.append((stamp, _event(stamp, cls_name, "del", ref, snapshot, now)))
    events.sort(key=lambda item: item[0])
    return [event for _stamp, event in events]


def valid_ref_counts(store, wanted):
    return {cls_name.lower(): len(store.tables[cls_name].rows) for cls_name in wanted}
