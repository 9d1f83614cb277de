"""The bus methods of xapi-db on a master: each maps onto the engine. (A slave's front will
forward the same methods to the master's xapi-db.)"""


def register(daemon, engine):
    ops = engine.ops
    reads = {
        "db.get_table_from_ref": ops.get_table_from_ref,
        "db.is_valid_ref": ops.is_valid_ref,
        "db.read_refs": ops.read_refs,
        "db.read_field": ops.read_field,
        "db.read_fields": ops.read_fields,
        "db.read_record": ops.read_record,
        "db.get_by_uuid": ops.get_by_uuid,
        "db.get_by_name_label": ops.get_by_name_label,
        "db.find_refs_with_filter": ops.find_refs_with_filter,
        "db.read_records_where": ops.read_records_where,
        "db.read_field_where": ops.read_field_where,
    }
    for name, fn in reads.items():
        daemon.register(name, fn)

    def writer(op):
        def call(*args):      # a future, answered when the write is durable and visible
            return engine.write_future(lambda txn: op(txn, *args))
        call.__signature__ = _without_txn(op)
        return call

    daemon.register("db.create_row", writer(ops.create_row))
    daemon.register("db.delete_row", writer(ops.delete_row))
    daemon.register("db.write_field", writer(ops.write_field))
    daemon.register("db.process_structured_field", writer(ops.process_structured_field))
    daemon.register("db.batch", engine.batch)
    daemon.register("db.touch_session", engine.touch_session)
    daemon.register("db.inject", engine.inject)
    daemon.register("db.events_since", engine.events_since)
    daemon.register("db.token", engine.token)
    daemon.register("db.gc_now", engine.gc_pass)
    daemon.register("db.flush_now", lambda: engine.flush(force=True))
    daemon.register("db.start_engine", engine.start_engine)
    daemon.register("db.dump", engine.dump)
    daemon.register("message.create", engine.message_create)
    daemon.register("message.destroy", engine.message_destroy)
    daemon.register("message.get_all_records", engine.messages.get_all_records)
    daemon.register("message.get_since", engine.messages.get_since)


def _without_txn(op):
    import inspect
    sig = inspect.signature(op)
    params = [p for name, p in sig.parameters.items() if name != "txn"]
    return sig.replace(parameters=params)
