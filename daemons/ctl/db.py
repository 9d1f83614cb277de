"""`xapi-ctl db dump|get|restore`: the pool database from the command line."""

import json
import sys
from pathlib import Path

from common.fileutil import atomic_write
from daemons.ctl.tree import CtlError, call_program

DB_CALL_TIMEOUT_S = 60.0


def _db(paths, method, *args):
    return call_program(paths, "xapi-db", method, *args, timeout_s=DB_CALL_TIMEOUT_S)


def cmd_db(paths, args, out=print):
    """The pool database: dump it, read a record, or leave a database to restore."""
    if args.db_command == "dump":
        return _dump(paths, args, out)
    if args.db_command == "get":
        return _get(paths, args, out)
    return _restore(paths, args, out)


def _dump(paths, args, out):
    """The pool database in xapi's state.db format, to a file or to standard output."""
    target = str(Path(args.file).absolute()) if args.file else None
    result = _db(paths, "db.dump", target)
    if target:
        out(f"wrote the database (generation {result['generation']}) to {target}")
    else:
        sys.stdout.write(result["xml"])
    return 0


def _get(paths, args, out):
    """One record, by ref or uuid, as JSON."""
    ref = args.ref
    if not ref.startswith("OpaqueRef:"):
        ref = _db(paths, "db.get_by_uuid", args.cls, ref)
    record = _db(paths, "db.read_record", args.cls, ref)
    out(json.dumps({"ref": ref, **record}, indent=1, sort_keys=True, default=str))
    return 0


def _restore(paths, args, out):
    """Leave a database to replace the pool DB at the next start of the tree."""
    from daemons.db import xmlfile
    source = Path(args.file)
    try:
        raw = xmlfile.read_file(source)
    except (OSError, xmlfile.DbFileError) as exc:
        raise CtlError(f"cannot restore from {source}: {exc}") from None
    data = source.read_bytes()
    atomic_write(paths.restore_db, data, mode=0o600)
    out(f"{source} (generation {raw.generation}, {sum(len(r) for r in raw.tables.values())} "
        f"rows) will replace the pool database at the next start of the tree "
        f"(`xapi-ctl down` then `xapi-ctl up`); a restart of xapi-db alone does not apply it")
    return 0


def add_parser(sub, add):
    p = add("db", cmd_db)
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    d = dbsub.add_parser("dump", help=_dump.__doc__)
    d.add_argument("--file", help="write here instead of standard output")
    g = dbsub.add_parser("get", help=_get.__doc__)
    g.add_argument("cls", metavar="CLASS")
    g.add_argument("ref", metavar="REF|UUID")
    r = dbsub.add_parser("restore", help=_restore.__doc__)
    r.add_argument("file", metavar="FILE")
    return p


