"""The RRD engine: round-robin databases in memory, updated as rrdtool's rrd_update.c does.

Pure: no I/O, no clock; every update names its own timestamp (integer seconds, as rrdtool's
``N:`` and ``<time>:`` updates in whole seconds), so tests drive it with made-up times.

Semantics kept from rrdtool (so a dump restored by ``rrdtool restore`` goes on the same way):

- Data source types GAUGE (the value is the rate), ABSOLUTE (the value counted since the last
  update, divided by the interval), DERIVE (the difference with the previous value, divided by the
  interval; a counter that went back gives a negative rate, unknown when ``min`` is 0: that is how
  rrdtool handles a counter reset). A rate outside [min, max] is unknown; an update later than the
  heartbeat after the previous one makes the whole interval unknown.
- Primary data points (PDPs) every ``step`` seconds: the time-weighted mean of the known rates
  over the step; unknown when more than half the step was unknown.
- Consolidated data points (CDPs) of ``pdp_cnt`` PDPs with AVERAGE, MIN, MAX or LAST: unknown when
  more than ``xff * pdp_cnt`` PDPs were unknown, else the CF of the known ones. A gap of several
  steps fills the rows it spans (the first with the CDP in progress, the rest with the PDP value).
  Where xff is 1.0 (rrdtool itself takes only xff < 1), a CDP with no known PDP at all is unknown.
"""

import math
from itertools import compress
from operator import add, gt, lt

NAN = float("nan")
INF = float("inf")
GAUGE, ABSOLUTE, DERIVE = "GAUGE", "ABSOLUTE", "DERIVE"
DS_TYPES = (GAUGE, ABSOLUTE, DERIVE)
AVERAGE, MIN, MAX, LAST = "AVERAGE", "MIN", "MAX", "LAST"
CFS = (AVERAGE, MIN, MAX, LAST)

STEP_S = 5
HEARTBEAT_S = 300
# (pdp_per_row, rows): 10 minutes of 5 s, 2 hours of 1 min, a week of 1 h, a year of 1 day
TIMESCALES = ((1, 120), (12, 120), (720, 168), (17280, 366))
HOST_XFF, VM_XFF = 1.0, 0.5

_isnan = math.isnan


class RrdError(ValueError):
    """A bad definition or update; the message names what was wrong."""


# xcp-rrdd's names go past rrdtool's 19 characters (the VM source memory_internal_free has 20):
# the names are xapi's, which clients read in rrd_updates legends; a dump with such a source is
# refused by `rrdtool restore`, as xcp-rrdd's own would be.
DS_NAME_MAX = 64
RRDTOOL_DS_NAME_MAX = 19


class DataSource:
    """One data source: its definition and its PDP state (rrdtool's ds_def and pdp_prep)."""

    __slots__ = ("name", "type", "heartbeat", "min", "max", "last_ds", "value", "unknown_sec")

    def __init__(self, name, type=GAUGE, heartbeat=HEARTBEAT_S, min=NAN, max=NAN):
        if not name or len(name) > DS_NAME_MAX or \
                not all(c.isalnum() or c in "_-" for c in name):
            raise RrdError(f"data source name {name!r}: 1 to {DS_NAME_MAX} characters of "
                           f"[A-Za-z0-9_-]")
        if type not in DS_TYPES:
            raise RrdError(f"data source {name}: type {type!r} is not one of {DS_TYPES}")
        if not heartbeat or heartbeat <= 0:
            raise RrdError(f"data source {name}: heartbeat {heartbeat!r} must be positive")
        self.name, self.type, self.heartbeat = name, type, int(heartbeat)
        self.min = NAN if min is None else float(min)
        self.max = NAN if max is None else float(max)
        self.last_ds = None       # the previous raw value (DERIVE needs it); None: unknown
        self.value = 0.0          # rate x seconds accumulated in the PDP in progress
        self.unknown_sec = 0      # unknown seconds of the PDP in progress


class Archive:
    """One round-robin archive: ``rows`` CDPs of ``pdp_cnt`` PDPs consolidated with ``cf``.
    ``data`` holds one list of values per row (one value per data source); ``cur_row`` is the
    newest. The CDP state per data source (rrdtool's cdp_prep) is in ``primary``,
    ``secondary``, ``value`` and ``unknown_pdps``."""

    __slots__ = ("cf", "pdp_cnt", "rows", "xff", "cur_row", "data",
                 "primary", "secondary", "value", "unknown_pdps")

    def __init__(self, cf, pdp_cnt, rows, xff, ds_cnt=0):
        if cf not in CFS:
            raise RrdError(f"archive: consolidation function {cf!r} is not one of {CFS}")
        if pdp_cnt < 1 or rows < 1:
            raise RrdError(f"archive {cf}: pdp_per_row {pdp_cnt} and rows {rows} must be >= 1")
        if not 0.0 <= xff <= 1.0:
            raise RrdError(f"archive {cf}: xff {xff} must be between 0 and 1")
        self.cf, self.pdp_cnt, self.rows, self.xff = cf, int(pdp_cnt), int(rows), float(xff)
        self.cur_row = self.rows - 1
        self.data = [[NAN] * ds_cnt for _ in range(self.rows)]
        self.primary = [NAN] * ds_cnt
        self.secondary = [NAN] * ds_cnt
        self.value = [self._carry_start()] * ds_cnt
        self.unknown_pdps = [0] * ds_cnt

    def _carry_start(self):
        """The CDP value of a consolidation with nothing in it yet."""
        return {AVERAGE: 0.0, MIN: INF, MAX: -INF}.get(self.cf, NAN)

    def add_source(self, unknown_pdps):
        for row in self.data:
            row.append(NAN)
        self.primary.append(NAN)
        self.secondary.append(NAN)
        self.value.append(self._carry_start())
        self.unknown_pdps.append(unknown_pdps)

    def remove_source(self, index):
        for row in self.data:
            del row[index]
        for column in (self.primary, self.secondary, self.value, self.unknown_pdps):
            del column[index]

    def row_seconds(self, step):
        return self.pdp_cnt * step

    def rows_oldest_first(self):
        """The rows in time order: the one after ``cur_row`` (the oldest) first."""
        start = self.cur_row + 1
        return self.data[start:] + self.data[:start]


def archive_specs(cfs=(AVERAGE, MIN, MAX), xff=HOST_XFF):
    """The archives of xapi's RRDs: the 5 s one AVERAGE only, the others in every CF of ``cfs``."""
    specs = [(AVERAGE, 1, TIMESCALES[0][1], xff)]
    for pdp_cnt, rows in TIMESCALES[1:]:
        specs.extend((cf, pdp_cnt, rows, xff) for cf in cfs)
    return specs


class Rrd:
    """A round-robin database with ``sources`` (DataSource) and ``archives`` (Archive)."""

    def __init__(self, last_update, step=STEP_S, sources=(), archives=()):
        if step < 1:
            raise RrdError(f"step {step} must be at least one second")
        self.step = int(step)
        self.last_update = int(last_update)
        self.sources = []
        self.index = {}
        self.archives = [a if isinstance(a, Archive) else Archive(*a) for a in archives]
        if not self.archives:
            raise RrdError("an RRD needs at least one archive")
        for ds in sources:
            self.add_source(ds)

    @classmethod
    def create(cls, now, sources=(), cfs=(AVERAGE, MIN, MAX), xff=HOST_XFF):
        """An empty RRD with xapi's four timescales (host: every CF, xff 1.0; a VM: AVERAGE
        only, xff 0.5 unless the pool asks for MIN and MAX too)."""
        return cls(now, STEP_S, sources, archive_specs(cfs, xff))

    # -- data sources -----------------------------------------------------------------------
    def add_source(self, ds):
        """Add a data source; its history is unknown. The PDP in progress counts as unknown
        up to now, as in a fresh rrdtool file."""
        if ds.name in self.index:
            raise RrdError(f"data source {ds.name} is already in this RRD")
        ds.last_ds, ds.value = None, NAN
        ds.unknown_sec = self.last_update % self.step
        self.index[ds.name] = len(self.sources)
        self.sources.append(ds)
        proc_pdp_cnt = self.last_update // self.step
        for a in self.archives:
            a.add_source(proc_pdp_cnt % a.pdp_cnt)

    def remove_source(self, name):
        i = self.index.pop(name)
        del self.sources[i]
        for a in self.archives:
            a.remove_source(i)
        self.index = {ds.name: n for n, ds in enumerate(self.sources)}

    def names(self):
        return [ds.name for ds in self.sources]

    # -- update -----------------------------------------------------------------------------
    def update(self, t, values):
        """One update at ``t`` (epoch seconds; fractions dropped). ``values`` maps names to
        numbers; a name left out, or None, or NaN, is unknown for this interval. Raises
        RrdError for a time not after the last update or an unknown name."""
        index = self.index
        # ``index`` holds the names in data source order (add_source appends, remove_source and
        # dump.parse_xml rebuild it in order), so its keys give the row's order
        row = list(map(values.get, index))
        # as many values found as given: every name is known (the cheap test); else check
        if len(row) - row.count(None) != len(values) and not values.keys() <= index.keys():
            for name in values:
                if name not in index:
                    raise RrdError(f"update: no data source {name!r} in this RRD")
        self.update_row(t, row)

    def update_row(self, t, row):
        """``update`` with the values as a list in data source order."""
        t = int(t)
        last = self.last_update
        if t <= last:
            raise RrdError(f"update at {t}: not after the last update {last} "
                           "(one second at least)")
        if len(row) != len(self.sources):
            raise RrdError(f"update: {len(row)} values for {len(self.sources)} data sources")
        step = self.step
        interval = t - last
        pdp_new = _pdp_new(self.sources, row, interval)
        proc_pdp_st = last - last % step
        occu_pdp_st = t - t % step
        self.last_update = t
        if occu_pdp_st <= proc_pdp_st:   # still inside the same PDP
            for ds, new in zip(self.sources, pdp_new):
                if new != new:
                    ds.unknown_sec += interval
                elif ds.value != ds.value:
                    ds.value = new
                else:
                    ds.value += new
            return
        elapsed = (occu_pdp_st - proc_pdp_st) // step
        # The PDP in progress closes at the first boundary after the last update; the PDPs
        # after it, up to the last boundary, take the new interval's rate (rrdtool 1.7).
        first_end = proc_pdp_st + step
        pre_int = first_end - last
        post_int = t - occu_pdp_st
        half_step = step / 2.0
        # float operands where the loop mixes them with floats: the same results (Python turns
        # an int operand into a float just as float() does), without mixed int/float arithmetic
        interval_f, pre_f, post_f = float(interval), float(pre_int), float(post_int)
        first = []
        add_first = first.append
        for ds, new in zip(self.sources, pdp_new):
            unknown_sec = ds.unknown_sec
            if new != new:
                known = step - unknown_sec - pre_int
                if half_step < unknown_sec or known <= 0:
                    add_first(NAN)
                else:
                    add_first(ds.value / known)
                ds.unknown_sec = post_int
                ds.value = NAN
            else:
                rate = new / interval_f
                value = ds.value
                value = (0.0 if value != value else value) + rate * pre_f
                if unknown_sec == 0:   # the PDP was known all along (the usual case)
                    add_first(value / step)
                elif half_step < unknown_sec:
                    add_first(NAN)
                else:
                    known = step - unknown_sec
                    add_first(value / known if known > 0 else NAN)
                ds.unknown_sec = 0
                ds.value = rate * post_f
        # a sum is NaN when any term is: one C loop tells whether a whole row is known
        total = sum(first)
        first_known = total == total
        proc_pdp_cnt = proc_pdp_st // step
        if elapsed == 1:   # the usual update: one step later
            for a in self.archives:
                pdp_cnt = a.pdp_cnt
                if pdp_cnt > 1 and proc_pdp_cnt % pdp_cnt < pdp_cnt - 1:
                    _accumulate(a, first, 1, first_known)   # no CDP completes
                else:
                    _write_rows(a, _consolidate(a, first, 1, proc_pdp_cnt, first_known))
            return
        rest = [NAN if new != new else new / interval for new in pdp_new]
        total = sum(rest)
        rest_known = total == total
        # rows are written as soon as they are consolidated (the second _consolidate changes
        # primary and secondary): the same rows in the same ring slots as writing all at once
        for a in self.archives:
            _write_rows(a, _consolidate(a, first, 1, proc_pdp_cnt, first_known))
            _write_rows(a, _consolidate(a, rest, elapsed - 1, proc_pdp_cnt + 1, rest_known))

    # -- reading ----------------------------------------------------------------------------
    def archive_end(self, a):
        """The time of the newest row of archive ``a``."""
        span = a.pdp_cnt * self.step
        return self.last_update - self.last_update % span

    def archive_rows(self, a):
        """[(time, [value per data source])] of archive ``a``, oldest first."""
        span = a.pdp_cnt * self.step
        end = self.archive_end(a)
        return [(end - (a.rows - 1 - n) * span, row)
                for n, row in enumerate(a.rows_oldest_first())]

    def find_archive(self, cf, seconds_per_row=None):
        """The archive of ``cf`` whose row length is ``seconds_per_row`` (None: the finest)."""
        found = [a for a in self.archives if a.cf == cf and
                 (seconds_per_row is None or a.pdp_cnt * self.step == seconds_per_row)]
        if not found:
            return None
        return min(found, key=lambda a: a.pdp_cnt)


def _pdp_new(sources, row, interval):
    """rrdtool's update_pdp_prep: rate x interval per data source (NaN: unknown), and the raw
    value kept in last_ds for the next DERIVE."""
    out = []
    append = out.append
    interval_f = float(interval)   # the same products and quotients as with the int
    for ds, value in zip(sources, row):
        if value is None or value != value:
            ds.last_ds = None
            append(NAN)
            continue
        if value.__class__ is not float:
            value = float(value)
        if interval > ds.heartbeat:
            new = NAN
        else:
            kind = ds.type
            if kind == GAUGE:
                new = value * interval_f
            elif kind == ABSOLUTE:
                new = value
            else:   # DERIVE
                last_ds = ds.last_ds
                new = NAN if last_ds is None else value - last_ds
        ds.last_ds = value
        if new == new:
            rate = new / interval_f
            if rate > ds.max or rate < ds.min:   # comparisons with NaN are false
                new = NAN
        append(new)
    return out


def _consolidate(a, pdp_temp, elapsed, proc_pdp_cnt, all_known=False):
    """rrdtool's update_cdp_prep for one archive, after ``elapsed`` PDPs completed with the
    values ``pdp_temp`` (``all_known``: none is NaN). Returns the rows to write, oldest first,
    as [(row, times)]; the rows are the archive's own lists, for _write_rows to copy at once."""
    pdp_cnt = a.pdp_cnt
    start_pdp_offset = pdp_cnt - proc_pdp_cnt % pdp_cnt
    if start_pdp_offset <= elapsed:
        step_cnt = (elapsed - start_pdp_offset) // pdp_cnt + 1
    else:
        step_cnt = 0
    if pdp_cnt == 1:
        a.primary = list(pdp_temp)
        a.secondary = list(pdp_temp)
    elif step_cnt == 0:
        _accumulate(a, pdp_temp, elapsed, all_known)
        return ()
    else:
        _close_cdp(a, pdp_temp, elapsed, start_pdp_offset)
    if step_cnt > 1:
        return ((a.primary, 1), (a.secondary, step_cnt - 1))
    return ((a.primary, 1),)


def _write_rows(a, runs):
    """rrdtool's write_to_rras: each row after ``cur_row`` in turn, so after a gap longer than
    the ring only the newest rows remain."""
    if not runs:
        return
    rows, data = a.rows, a.data
    if len(runs) == 1 and runs[0][1] == 1:    # the usual case: one row
        a.cur_row = cur = (a.cur_row + 1) % rows
        data[cur] = list(runs[0][0])
        return
    total = sum(times for _, times in runs)
    skip = max(0, total - rows)    # rows written and overwritten again within this update
    cur = (a.cur_row + skip) % rows
    for row, times in runs:
        dropped = min(skip, times)
        skip -= dropped
        for _ in range(times - dropped):
            cur = (cur + 1) % rows
            data[cur] = list(row)
    a.cur_row = cur


def _accumulate(a, pdp_temp, elapsed, all_known=False):
    """No CDP completes: add the PDPs to the CDPs in progress. With every PDP known and no CDP
    value NaN (the usual case) C-level maps do what the loop below does, term for term:
    ``v + p * elapsed`` (``p * 1`` is ``p``) for AVERAGE; for MIN and MAX only the values that
    ``p`` beats strictly are replaced, as in the loop."""
    value, unknown = a.value, a.unknown_pdps
    cf = a.cf
    if all_known and cf != LAST:
        total = sum(value)
        if total == total:
            if cf == AVERAGE:
                if elapsed == 1:
                    value[:] = map(add, value, pdp_temp)
                else:
                    value[:] = [v + p * elapsed for v, p in zip(value, pdp_temp)]
            else:   # only the CDPs that change are touched: compress picks them at C speed
                for i in compress(range(len(value)), map(lt if cf == MIN else gt, pdp_temp,
                                                         value)):
                    value[i] = pdp_temp[i]
            return
    for i, p in enumerate(pdp_temp):
        if p != p:
            unknown[i] += elapsed
            continue
        v = value[i]
        if v != v:
            value[i] = p * elapsed if cf == AVERAGE else p
        elif cf == AVERAGE:
            value[i] = v + p * elapsed
        elif cf == MIN:
            if p < v:
                value[i] = p
        elif cf == MAX:
            if p > v:
                value[i] = p
        else:
            value[i] = p


def _close_cdp(a, pdp_temp, elapsed, start_pdp_offset):
    """At least one CDP completes: its value goes to ``primary``, the fill-in for the rows
    after it to ``secondary``, and what is left over starts the next CDP."""
    cf, pdp_cnt = a.cf, a.pdp_cnt
    limit = pdp_cnt * a.xff
    into_next = (elapsed - start_pdp_offset) % pdp_cnt
    start = a._carry_start()
    value, unknown, primary, secondary = a.value, a.unknown_pdps, a.primary, a.secondary
    for i, p in enumerate(pdp_temp):
        known_p = p == p
        if known_p:
            secondary[i] = p
        else:
            unknown[i] += start_pdp_offset
            secondary[i] = NAN
        u = unknown[i]
        if u > limit or u >= pdp_cnt:
            primary[i] = NAN
        else:
            v = value[i]
            if cf == AVERAGE:
                cum = 0.0 if v != v else v
                cur = p if known_p else 0.0
                primary[i] = (cum + cur * start_pdp_offset) / (pdp_cnt - u)
            elif cf == MAX:
                cum = -INF if v != v else v
                cur = p if known_p else -INF
                primary[i] = cur if cur > cum else cum
            elif cf == MIN:
                cum = INF if v != v else v
                cur = p if known_p else INF
                primary[i] = cur if cur < cum else cum
            else:
                primary[i] = p
        if into_next == 0 or not known_p:
            value[i] = start
        else:
            value[i] = p * into_next if cf == AVERAGE else p
        unknown[i] = into_next if not known_p else 0


def rrd_max_seconds(rrd):
    """The span of the longest archive, in seconds."""
    return max(a.rows * a.pdp_cnt for a in rrd.archives) * rrd.step


def isnan(x):
    return _isnan(x)
