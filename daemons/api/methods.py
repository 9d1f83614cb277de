"""The XenAPI method table: generated from common/schema.py for every class, plus the
hand-written messages (sessions, pool, host, message, event).

Per class (xapi's generated messages): ``get_all``, ``get_all_records``, ``get_record``,
``get_by_uuid``, ``get_by_name_label`` (classes with a name_label), ``get_<field>`` for every
field, and for writable (RW) fields only ``set_<field>``, ``add_to_<map>`` /
``remove_from_<map>`` and ``add_<set>`` / ``remove_<set>``. Each method lists its parameters
with their wire types (marshal.py); the session, when the method takes one, comes first and is
not listed. ``fn(call, *args)`` is a coroutine; ``call`` gives the daemon and the caller.
"""

from dataclasses import dataclass

from common import schema
from common.errors import XapiError
from daemons.api import marshal as m

# REFERENCE.md "XenAPI wire": what a host in emergency mode (or still booting) still serves.
EMERGENCY_CALLS = frozenset((
    "session.slave_local_login", "session.slave_local_login_with_password",
    "session.local_logout", "pool.is_slave", "pool.ping_slave", "pool.slave_reset_master",
    "pool.transition_to_master", "host.propose_new_master", "host.commit_new_master",
    "host.abort_new_master", "host.local_assert_healthy", "host.is_in_emergency_mode",
    "host.emergency_ha_disable", "host.local_management_reconfigure",
    "host.management_disable", "host.shutdown_agent", "host.signal_networking_change",
))

# message.create's cls -> the schema class whose uuid obj_uuid must be.
MESSAGE_CLASS_TABLES = {"VM": "VM", "Host": "host", "SR": "SR", "Pool": "pool", "VDI": "VDI"}

@dataclass(frozen=True)
class Method:
    name: str
    params: tuple                 # ((name, wire type), ...), the session not included
    result: tuple                 # wire type of the value
    fn: object                    # async fn(call, *typed args)
    session: bool = True          # takes a session first, checked before the call
    optional: int = 0             # how many trailing params may be left out

    @property
    def arity(self):
        """What MESSAGE_PARAMETER_COUNT_MISMATCH counts: every parameter, session included."""
        return len(self.params) + (1 if self.session else 0)


def _db(call, method, *args, **kw):
    return call.api.db.call(method, *args, **kw)


# -- generated per class ---------------------------------------------------------------------

def _class_methods(cls):
    name = cls.name
    self_param = ("self", m.ref(name))
    out = []

    def add(msg, params, result, fn):
        out.append(Method(f"{name}.{msg}", tuple(params), result, fn))

    async def get_all(call):
        return await _db(call, "db.read_refs", name)

    async def get_all_records(call):
        return await _db(call, "db.read_records_where", name, ["true"])

    async def get_record(call, ref):
        return await _db(call, "db.read_record", name, ref)

    async def get_by_uuid(call, uuid):
        return await _db(call, "db.get_by_uuid", name, uuid)

    add("get_all", (), m.set_of(m.ref(name)), get_all)
    add("get_all_records", (), m.map_of(m.record(name)), get_all_records)
    add("get_record", (self_param,), m.record(name), get_record)
    if "uuid" in cls.fields:
        add("get_by_uuid", (("uuid", m.STRING),), m.ref(name), get_by_uuid)
    if "name_label" in cls.fields:
        async def get_by_name_label(call, label):
            return await _db(call, "db.get_by_name_label", name, label)
        add("get_by_name_label", (("label", m.STRING),), m.set_of(m.ref(name)),
            get_by_name_label)
    for fld in cls.fields.values():
        out.extend(_field_methods(cls, fld, self_param))
    return out


def _field_methods(cls, fld, self_param):
    name, field_name = cls.name, fld.name
    wire_type = m.field_type(fld)
    out = []

    async def getter(call, ref):
        return await _db(call, "db.read_field", name, ref, field_name)
    out.append(Method(f"{name}.get_{field_name}", (self_param,), wire_type, getter))
    if fld.ro or fld.derived:
        return out

    async def setter(call, ref, value):
        await _db(call, "db.write_field", name, ref, field_name, value)
    out.append(Method(f"{name}.set_{field_name}", (self_param, ("value", wire_type)), m.VOID,
                      setter))
    if fld.type == "map":
        value_type = wire_type[1]

        async def add_to(call, ref, key, value):
            await _db(call, "db.process_structured_field", name, ref, field_name, "add_map",
                      key, value)

        async def remove_from(call, ref, key):
            await _db(call, "db.process_structured_field", name, ref, field_name,
                      "remove_map", key)
        out.append(Method(f"{name}.add_to_{field_name}",
                          (self_param, ("key", m.STRING), ("value", value_type)), m.VOID,
                          add_to))
        out.append(Method(f"{name}.remove_from_{field_name}",
                          (self_param, ("key", m.STRING)), m.VOID, remove_from))
    elif fld.type == "set":
        item_type = wire_type[1]

        async def add_item(call, ref, value):
            await _db(call, "db.process_structured_field", name, ref, field_name, "add_set",
                      value)

        async def remove_item(call, ref, value):
            await _db(call, "db.process_structured_field", name, ref, field_name,
                      "remove_set", value)
        out.append(Method(f"{name}.add_{field_name}", (self_param, ("value", item_type)),
                          m.VOID, add_item))
        out.append(Method(f"{name}.remove_{field_name}", (self_param, ("value", item_type)),
                          m.VOID, remove_item))
    return out


# -- sessions --------------------------------------------------------------------------------

async def _login_with_password(call, user, password, version="", originator=""):
    return await call.api.sessions.login_with_password(call.transport, user, password,
                                                       version, originator)


async def _slave_local_login(call, secret):
    return await call.api.sessions.slave_local_login(secret)


async def _slave_local_login_with_password(call, user, password):
    return await call.api.sessions.slave_local_login_with_password(call.transport, user,
                                                                   password)


async def _logout(call):
    await call.api.sessions.logout(call.session)
    call.api.events.forget_session(call.session)


async def _local_logout(call):
    await call.api.sessions.local_logout(call.session)
    call.api.events.forget_session(call.session)


def _session_methods():
    s = m.STRING
    return [
        Method("session.login_with_password",
               (("uname", s), ("pwd", s), ("version", s), ("originator", s)),
               m.ref("session"), _login_with_password, session=False, optional=2),
        Method("session.slave_local_login", (("psecret", s),), m.ref("session"),
               _slave_local_login, session=False),
        Method("session.slave_local_login_with_password", (("uname", s), ("pwd", s)),
               m.ref("session"), _slave_local_login_with_password, session=False),
        Method("session.logout", (), m.VOID, _logout),
        Method("session.local_logout", (), m.VOID, _local_logout),
    ]


# -- pool and host -----------------------------------------------------------------------------

async def _pool_is_slave(call, host):
    return call.api.role == "slave"


async def _host_is_in_emergency_mode(call):
    return call.api.boot_state == "emergency"


# -- messages --------------------------------------------------------------------------------

async def _message_create(call, name, priority, cls, obj_uuid, body):
    table = MESSAGE_CLASS_TABLES.get(cls)
    if table is not None:
        await _db(call, "db.get_by_uuid", table, obj_uuid)   # UUID_INVALID [class, uuid]
    elif cls in ("VMPP", "VMSS", "PVS_proxy", "Certificate"):
        raise XapiError("UUID_INVALID", cls, obj_uuid)       # no such objects here
    return await _db(call, "message.create", name, priority, cls, obj_uuid, body)


async def _message_get_all_records(call):
    return await _db(call, "message.get_all_records")


async def _message_get_all(call):
    return list(await _db(call, "message.get_all_records"))


async def _message_get_record(call, ref):
    records = await _db(call, "message.get_all_records")
    if ref not in records:
        raise XapiError("HANDLE_INVALID", "message", ref)
    return records[ref]


async def _message_get_by_uuid(call, uuid):
    for ref, record in (await _db(call, "message.get_all_records")).items():
        if record["uuid"] == uuid:
            return ref
    raise XapiError("UUID_INVALID", "message", uuid)


async def _message_get_since(call, since):
    return await _db(call, "message.get_since", since)


async def _message_destroy(call, ref):
    await _db(call, "message.destroy", ref)


def _message_methods():
    msg_ref = m.ref("message")
    records = m.map_of(m.MESSAGE)
    return [
        Method("message.create", (("name", m.STRING), ("priority", m.INT),
                                  ("cls", m.STRING), ("obj_uuid", m.STRING),
                                  ("body", m.STRING)), msg_ref, _message_create),
        Method("message.get_all_records", (), records, _message_get_all_records),
        Method("message.get_all", (), m.set_of(msg_ref), _message_get_all),
        Method("message.get_record", (("self", msg_ref),), m.MESSAGE, _message_get_record),
        Method("message.get_by_uuid", (("uuid", m.STRING),), msg_ref, _message_get_by_uuid),
        Method("message.get_since", (("since", m.DATETIME),), records, _message_get_since),
        Method("message.destroy", (("self", msg_ref),), m.VOID, _message_destroy),
    ]


# -- the table -------------------------------------------------------------------------------

def build_table(event_methods=()):
    """Every method by name. ``event_methods`` come from the modules whose methods keep state
    (events.py, storage.py)."""
    table = {}
    for cls in schema.CLASSES.values():
        for method in _class_methods(cls):
            table[method.name] = method
    extra = _session_methods() + _message_methods() + list(event_methods) + [
        Method("pool.is_slave", (("host", m.ref("host")),), m.BOOL, _pool_is_slave),
        Method("host.is_in_emergency_mode", (), m.BOOL, _host_is_in_emergency_mode),
    ]
    for method in extra:
        table[method.name] = method
    return table
