"""One pass of the database garbage collector (xapi's Db_gc.single_pass): rows whose required
refs dangle, metrics without an owner, sessions and tasks that timed out."""

import datetime

from common import schema

SESSION_TIMEOUT_S = 86400.0
TASK_PENDING_TIMEOUT_S = 86400.0
TASK_COMPLETED_TIMEOUT_S = 3900.0
NULL_REF = "OpaqueRef:NULL"


def _age_s(value, now):
    if not isinstance(value, datetime.datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return (now - value).total_seconds()


def doomed_rows(store, now=None):
    """[(class, ref, reason)] for one pass, in a stable order."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    doomed = []
    seen = set()

    def doom(cls_name, ref, reason):
        if (cls_name, ref) not in seen:
            seen.add((cls_name, ref))
            doomed.append((cls_name, ref, reason))

    for cls_name, table in store.tables.items():
        required = [f for f in table.cls.fields.values() if f.required and f.type == "ref"]
        for ref, row in table.rows.items():
            for field in required:
                target = row.values.get(field.name, NULL_REF)
                if target == NULL_REF or target not in store.by_ref:
                    doom(cls_name, ref, f"{field.name} {target} does not exist")
                    break
    for metrics_class, owner_class, owner_field in schema.OWNER_RULES:
        owned = {row.values.get(owner_field) for row in store.tables[owner_class].rows.values()}
        for ref in store.tables[metrics_class].rows:
            if ref not in owned:
                doom(metrics_class, ref, f"no {owner_class} owns it")
    for ref, row in store.tables["session"].rows.items():
        age = _age_s(row.values.get("last_active"), now)
        if age is not None and age > SESSION_TIMEOUT_S:
            doom("session", ref, f"inactive for {age:.0f} s")
    for ref, row in store.tables["task"].rows.items():
        status = row.values.get("status")
        if status == "pending":
            age = _age_s(row.values.get("created"), now)
            if age is not None and age > TASK_PENDING_TIMEOUT_S:
                doom("task", ref, f"pending for {age:.0f} s")
        else:
            age = _age_s(row.values.get("finished"), now)
            if age is not None and age > TASK_COMPLETED_TIMEOUT_S:
                doom("task", ref, f"completed {age:.0f} s ago")
    return doomed
