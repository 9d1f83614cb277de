"""RRDs as text: rrdtool's dump XML (version 0003, what ``rrdtool restore`` reads) both ways, and
rrd_updates as rrdtool's xport XML or as JSON.

Pure: strings in, strings out. Numbers are written with 17 significant digits, so a dump read
back is the same RRD to the bit (rrdtool's own dumps keep 11); unknown is ``NaN``.
"""

import json
import math
from xml.etree import ElementTree

from daemons.rrd.engine import (CFS, DS_TYPES, NAN, Archive, DataSource, Rrd, RrdError)

XML_HEAD = ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<!DOCTYPE rrd SYSTEM "http://oss.oetiker.ch/rrdtool/rrdtool.dtd">\n'
            '<!-- Round Robin Database Dump -->\n')


def fmt(value):
    """A value as rrdtool's dump writes it (NaN for unknown), with every digit kept."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Inf" if value > 0 else "-Inf"
    return "%.16e" % value


def _fmt_last_ds(value):
    if value is None:
        return "U"
    if value == int(value) and abs(value) < 1e18:
        return str(int(value))
    return repr(value)


def dump_xml(rrd):
    """The whole RRD as rrdtool dump XML, version 0003."""
    out = [XML_HEAD, "<rrd>\n\t<version>0003</version>\n",
           f"\t<step>{rrd.step}</step> <!-- Seconds -->\n",
           f"\t<lastupdate>{rrd.last_update}</lastupdate>\n"]
    for ds in rrd.sources:
        out.append(
            f"\t<ds>\n\t\t<name> {ds.name} </name>\n\t\t<type> {ds.type} </type>\n"
            f"\t\t<minimal_heartbeat>{ds.heartbeat}</minimal_heartbeat>\n"
            f"\t\t<min>{fmt(ds.min)}</min>\n\t\t<max>{fmt(ds.max)}</max>\n"
            f"\t\t<last_ds>{_fmt_last_ds(ds.last_ds)}</last_ds>\n"
            f"\t\t<value>{fmt(ds.value)}</value>\n"
            f"\t\t<unknown_sec> {ds.unknown_sec} </unknown_sec>\n\t</ds>\n")
    for a in rrd.archives:
        out.append(f"\t<rra>\n\t\t<cf>{a.cf}</cf>\n"
                   f"\t\t<pdp_per_row>{a.pdp_cnt}</pdp_per_row> "
                   f"<!-- {a.pdp_cnt * rrd.step} seconds -->\n"
                   f"\t\t<params>\n\t\t<xff>{fmt(a.xff)}</xff>\n\t\t</params>\n"
                   "\t\t<cdp_prep>\n")
        for i in range(len(rrd.sources)):
            out.append(f"\t\t\t<ds>\n\t\t\t<primary_value>{fmt(a.primary[i])}</primary_value>\n"
                       f"\t\t\t<secondary_value>{fmt(a.secondary[i])}</secondary_value>\n"
                       f"\t\t\t<value>{fmt(a.value[i])}</value>\n"
                       f"\t\t\t<unknown_datapoints>{a.unknown_pdps[i]}</unknown_datapoints>\n"
                       "\t\t\t</ds>\n")
        out.append("\t\t</cdp_prep>\n\t\t<database>\n")
        for row in a.rows_oldest_first():
            out.append("\t\t\t<row>" + "".join(f"<v>{fmt(v)}</v>" for v in row) + "</row>\n")
        out.append("\t\t</database>\n\t</rra>\n")
    out.append("</rrd>\n")
    return "".join(out)


# -- reading a dump back ------------------------------------------------------------------------

def _text(elem, tag, where):
    child = elem.find(tag)
    if child is None or child.text is None:
        raise RrdError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _number(elem, tag, where, kind=float):
    text = _text(elem, tag, where)
    try:
        return kind(text)
    except ValueError:
        raise RrdError(f"{where}: <{tag}> {text!r} is not a number") from None


def parse_xml(text):
    """The RRD of a dump (ours or rrdtool's); RrdError naming the element when it is not one."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise RrdError(f"not XML: {exc}") from None
    if root.tag != "rrd":
        raise RrdError(f"root element <{root.tag}>, expected <rrd>")
    version = _text(root, "version", "rrd")
    if version not in ("0003", "0004"):
        raise RrdError(f"rrd: version {version}, expected 0003")
    step = _number(root, "step", "rrd", int)
    last_update = _number(root, "lastupdate", "rrd", int)
    sources = []
    for n, elem in enumerate(root.findall("ds")):
        where = f"ds[{n}]"
        kind = _text(elem, "type", where)
        if kind not in DS_TYPES:
            raise RrdError(f"{where}: type {kind!r} is not one of {DS_TYPES}")
        ds = DataSource(_text(elem, "name", where), kind,
                        _number(elem, "minimal_heartbeat", where, int),
                        _number(elem, "min", where), _number(elem, "max", where))
        last = _text(elem, "last_ds", where)
        try:
            ds.last_ds = None if last == "U" else float(last)
        except ValueError:
            raise RrdError(f"{where}: <last_ds> {last!r} is not a number or U") from None
        ds.value = _number(elem, "value", where)
        ds.unknown_sec = _number(elem, "unknown_sec", where, int)
        sources.append(ds)
    names = [ds.name for ds in sources]
    if len(set(names)) != len(names):
        raise RrdError("two data sources have the same name")
    archives = []
    for n, elem in enumerate(root.findall("rra")):
        where = f"rra[{n}]"
        cf = _text(elem, "cf", where)
        if cf not in CFS:
            raise RrdError(f"{where}: cf {cf!r} is not one of {CFS}")
        params = elem.find("params")
        xff = _number(params if params is not None else elem, "xff", where)
        pdp_cnt = _number(elem, "pdp_per_row", where, int)
        rows = []
        for r, row in enumerate(elem.iterfind("database/row")):
            try:
                values = [float(v.text) for v in row.iter("v")]
            except (TypeError, ValueError):
                raise RrdError(f"{where} row {r}: a value is not a number") from None
            if len(values) != len(sources):
                raise RrdError(f"{where} row {r}: {len(values)} values for "
                               f"{len(sources)} data sources")
            rows.append(values)
        if not rows:
            raise RrdError(f"{where}: no rows")
        a = Archive(cf, pdp_cnt, len(rows), xff)
        a.data, a.cur_row = rows, len(rows) - 1
        preps = elem.findall("cdp_prep/ds")
        if len(preps) != len(sources):
            raise RrdError(f"{where}: {len(preps)} cdp_prep entries for "
                           f"{len(sources)} data sources")
        a.primary = [_number(p, "primary_value", where) for p in preps]
        a.secondary = [_number(p, "secondary_value", where) for p in preps]
        a.value = [_number(p, "value", where) for p in preps]
        a.unknown_pdps = [_number(p, "unknown_datapoints", where, int) for p in preps]
        archives.append(a)
    if not archives:
        raise RrdError("rrd: no <rra>")
    rrd = Rrd(last_update, step, archives=archives)
    rrd.sources = sources
    rrd.index = {name: i for i, name in enumerate(names)}
    return rrd


# -- rrd_updates ---------------------------------------------------------------------------------

def choose_archive(rrd, start, interval, cf):
    """xcp-rrd's choice for rrd_updates: among the archives of ``cf`` whose rows are at least
    ``interval`` seconds long, the finest whose span reaches back to ``start``, else the
    coarsest."""
    fitting = sorted((a for a in rrd.archives
                      if a.cf == cf and a.pdp_cnt * rrd.step >= (interval or 0)),
                     key=lambda a: a.pdp_cnt)
    if not fitting:
        return None
    for a in fitting:
        if rrd.archive_end(a) - a.rows * a.pdp_cnt * rrd.step <= start:
            return a
    return fitting[-1]


def updates(prefixed, start, interval, cf):
    """The rows of every RRD of ``prefixed`` ([(legend prefix "host:<uuid>", Rrd)]) from
    ``start`` on, newest first: {"start", "step", "end", "legend", "rows": [(t, [v...])]}.
    The archive is chosen on the first RRD; the others use their archive of the same row length
    (unknown where they have none)."""
    if not prefixed:
        return {"start": start, "step": 0, "end": start, "legend": [], "rows": []}
    first = prefixed[0][1]
    a0 = choose_archive(first, start, interval, cf)
    if a0 is None:
        raise RrdError(f"no {cf} archive with rows of {interval} s or more")
    span = a0.pdp_cnt * first.step
    columns, legend = [], []
    for prefix, rrd in prefixed:
        a = rrd.find_archive(cf, span)
        rows = {} if a is None else dict(rrd.archive_rows(a))
        for i, name in enumerate(rrd.names()):
            legend.append(f"{cf}:{prefix}:{name}")
            columns.append((rows, i))
    times = sorted((t for t, _ in first.archive_rows(a0) if t >= start), reverse=True)
    out = []
    for t in times:
        values = []
        for rows, i in columns:
            row = rows.get(t)
            values.append(NAN if row is None else row[i])
        out.append((t, values))
    return {"start": times[-1] if times else start, "step": span,
            "end": times[0] if times else start, "legend": legend, "rows": out}


def xport_xml(result):
    """rrd_updates as rrdtool's xport XML (newest row first, as xapi serves it)."""
    legend = "".join(f"<entry>{e}</entry>" for e in result["legend"])
    head = (f'<?xml version="1.0" encoding="ISO-8859-1"?>\n<xport><meta>'
            f'<start>{result["start"]}</start><step>{result["step"]}</step>'
            f'<end>{result["end"]}</end><rows>{len(result["rows"])}</rows>'
            f'<columns>{len(result["legend"])}</columns><legend>{legend}</legend></meta><data>')
    rows = "".join(f"<row><t>{t}</t>" + "".join(f"<v>{fmt(v)}</v>" for v in values) + "</row>"
                   for t, values in result["rows"])
    return head + rows + "</data></xport>"


def xport_json(result):
    """rrd_updates as JSON: {"meta": {start, step, end, rows, columns, legend}, "data":
    [{"t": T, "values": [...]}]}, newest first; unknown is null."""
    return json.dumps({
        "meta": {"start": result["start"], "step": result["step"], "end": result["end"],
                 "rows": len(result["rows"]), "columns": len(result["legend"]),
                 "legend": result["legend"]},
        "data": [{"t": t, "values": [v if math.isfinite(v) else None for v in values]}
                 for t, values in result["rows"]]}, allow_nan=False)
