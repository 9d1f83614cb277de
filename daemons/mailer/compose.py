"""From an outbox entry to an e-mail, and from a message to the XML xapi gives its hook.

Subjects and bodies follow xapi's mail-alarm (xen-api ``python3/libexec/mail-alarm``): a subject
``[<pool>] XenServer Alarm|HA Alarm|Message: ...`` naming the message and its object; for an
``ALARM`` the body's first line is ``value: <float>`` and its ``config:`` part names the data
source and its trigger level and period; ``HA_HOST_FAILED`` carries its text in the body. The
e-mail is deterministic for one entry (Date is the message's timestamp, Message-ID comes from the
message uuid), so a retry after a crash sends the same e-mail. Everything that reaches a header
is sanitised (control characters, CR and LF removed, length capped); the body keeps its lines,
loses other control characters and is cut past MAX_BODY_CHARS.
"""

import email.header
import email.utils
import html
import quopri
import re
from datetime import datetime, timezone

from daemons.mailer.settings import PRIORITY_NAMES

BRAND = "XenServer"
MAX_HEADER_PART_CHARS = 120
MAX_BODY_CHARS = 64 * 1024
_HEADER_JUNK = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029\ud800-\udfff]+")
_BODY_JUNK = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_XAPI_STAMP = re.compile(r"(\d{4})(\d\d)(\d\d)T(\d\d):(\d\d):(\d\d)Z\Z", re.ASCII)
MAX_LINE_BYTES = 998          # RFC 5322: longer lines go quoted-printable

ALARM_LABELS = {
    "cpu_usage": "CPU usage",
    "network_usage": "Network usage",
    "memory_free_kib": "Free memory",
    "memory_internal_free": "Free memory",
    "disk_usage": "Disk usage",
    "fs_usage": "Filesystem usage",
    "log_fs_usage": "Log filesystem usage",
    "mem_usage": "Memory usage",
}


def header_text(value, limit=MAX_HEADER_PART_CHARS):
    """One line, no control characters (no header injection), at most ``limit`` characters."""
    text = " ".join(_HEADER_JUNK.sub(" ", str(value)).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def body_text(value):
    """The message body as readable plain text: lines kept (CR LF and CR become LF), other
    control characters dropped, cut past MAX_BODY_CHARS with a note."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    text = _BODY_JUNK.sub("", text)
    if len(text) > MAX_BODY_CHARS:
        text = (text[:MAX_BODY_CHARS]
                + f"\n[... {len(text) - MAX_BODY_CHARS} more characters not shown]")
    return text


def xapi_timestamp(ts):
    """xapi's message timestamp form, ``20250319T04:16:24Z``."""
    if isinstance(ts, str):
        return ts
    return ts.astimezone(timezone.utc).strftime("%Y%m%dT%H:%M:%SZ")


def parse_xapi_timestamp(text):
    found = _XAPI_STAMP.match(text)
    if found:      # the usual form, without strptime's cost (it is parsed for every e-mail)
        return datetime(*map(int, found.groups()), tzinfo=timezone.utc)
    for fmt in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def parse_alarm(body):
    """An ALARM body (``value: 0.93\\nconfig:\\n<variable>...``) -> dict, or None."""
    first, _, rest = str(body).partition("\n")
    key, sep, value = first.partition(":")
    if not sep or key.strip() != "value":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    config = html.unescape(rest.split("config:", 1)[1]) if "config:" in rest else ""

    def attr(tag):
        found = re.search(rf"<{tag}\s+value=\"([^\"]*)\"", config)
        return found.group(1) if found else None
    return {"value": number, "param": attr("name") or "", "level": attr("alarm_trigger_level"),
            "period": attr("alarm_trigger_period")}


def _object(entry):
    msg = entry["message"]
    name = header_text(entry.get("obj_name") or "")
    return f'{msg["cls"]} "{name}"' if name else f'{msg["cls"]} {msg["obj_uuid"]}'


def subject_and_intro(entry):
    """The subject and the first paragraph of the body, per kind of message."""
    msg = entry["message"]
    pool = header_text(entry.get("pool_name") or "") or "pool"
    name = header_text(msg["name"])
    obj = _object(entry)
    if name == "ALARM" and (alarm := parse_alarm(msg["body"])) is not None:
        param = alarm["param"]
        label = ALARM_LABELS.get(param) or (
            "Storage throughput" if param.startswith("sr_io_throughput_total_") else param
            or "value")
        subject = f"[{pool}] {BRAND} Alarm: {header_text(label)} on {obj}"
        intro = [f"{label} on {obj} has been {alarm['value']:g}"
                 + (f" on average for the last {alarm['period']} seconds"
                    if alarm["period"] else "") + "."]
        if alarm["level"] is not None:
            intro.append(f"This alarm is set to be triggered at {alarm['level']} "
                         f"(data source {param or 'unknown'}).")
        return subject, "\n".join(intro)
    if name == "HA_HOST_FAILED":
        text = body_text(msg["body"]).strip()
        subject = f"[{pool}] {BRAND} HA Alarm: {header_text(text or name)}"
        return subject, (f"{text}\n\nThis alarm is raised when a host of a high-availability "
                         "pool fails.")
    if name == "POOL_MASTER_TRANSITION":
        subject = f"[{pool}] {BRAND}: {obj} is now the pool master"
        return subject, (f"The master of pool \"{pool}\" changed: {obj} "
                         f"({msg['obj_uuid']}) now holds the pool database.\n\n"
                         + body_text(msg["body"]).strip())
    subject = f"[{pool}] {BRAND} Message: {name} on {obj}"
    return subject, f"{BRAND} raised the message {name} on {obj}."


def details(entry):
    msg = entry["message"]
    priority = msg["priority"]
    lines = ["Field\t\tValue", "-----\t\t-----",
             f"Name:\t\t{header_text(msg['name'])}",
             f"Priority:\t{priority} ({PRIORITY_NAMES.get(priority, 'custom')})",
             f"Class:\t\t{msg['cls']}",
             f"Object UUID:\t{msg['obj_uuid']}",
             f"Object name:\t{header_text(entry.get('obj_name') or '')}",
             f"Timestamp:\t{msg['timestamp']}",
             f"Message UUID:\t{msg['uuid']}",
             f"Pool name:\t{header_text(entry.get('pool_name') or '')}",
             "Body:", body_text(msg["body"])]
    return "\n".join(lines)


def message_id(entry):
    """``<uuid@domain>`` of the message (``<uuid.repeats@domain>`` for folded repeats): the
    same for every attempt, so a duplicate after a crash is recognisable."""
    domain = entry["sender"].rpartition("@")[2] or "localhost"
    if entry["kind"] == "fold":
        return f"<{entry['fold']['first_uuid']}.repeats@{domain}>"
    return f"<{entry['message']['uuid']}@{domain}>"


class Composed:
    """An e-mail ready for SMTP: its headers (decoded, for logs and tests) and its bytes."""

    __slots__ = ("headers", "data")

    def __init__(self, headers, data):
        self.headers, self.data = headers, data

    def __getitem__(self, name):
        return self.headers[name]


def _header(name, value):
    """``Name: value`` (RFC 2047 encoded words when not ASCII), CRLF-folded."""
    if value.isascii():
        return f"{name}: {value}"
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(
        linesep="\r\n", maxlinelen=76)
    return f"{name}: {encoded}"


def compose(entry):
    """The e-mail of a ``mail`` or ``fold`` outbox entry. Built by hand rather than with
    email.message.EmailMessage (which costs milliseconds per e-mail): one-line sanitised
    headers, a text/plain body in the charset, 7bit when it can be, else quoted-printable."""
    msg = entry["message"]
    subject, intro = subject_and_intro(entry)
    if entry["kind"] == "fold":
        fold = entry["fold"]
        subject = f"{subject} (repeated {fold['count']} times)"
        intro = (f"{header_text(msg['name'])} on {_object(entry)} was raised {fold['count']} "
                 f"more time(s) between {fold['first']} and {fold['last']}. Repeats of one "
                 f"message for one object are folded into one e-mail per mail-inhibit-period "
                 f"({fold['inhibit_s']:g} s). The latest of them:\n\n{intro}")
    charset = entry.get("charset") or "utf-8"
    headers = {
        "From": entry["sender"],
        "To": ", ".join(entry["to"]),
        "Subject": header_text(subject, limit=400),
        "Date": email.utils.format_datetime(parse_xapi_timestamp(msg["timestamp"])),
        "Message-ID": message_id(entry),
        "Auto-Submitted": "auto-generated",
        "X-Xapi-Message": f"{header_text(msg['name'])} {msg['uuid']}",
        "MIME-Version": "1.0",
        "Content-Type": f'text/plain; charset="{charset}"',
    }
    body = f"{intro}\n\n{details(entry)}\n".encode(charset, "replace")
    if body.isascii() and max(map(len, body.split(b"\n"))) <= MAX_LINE_BYTES:
        headers["Content-Transfer-Encoding"] = "7bit"
    else:
        headers["Content-Transfer-Encoding"] = "quoted-printable"
        body = quopri.encodestring(body)
    head = "\r\n".join(_header(name, value) for name, value in headers.items())
    data = head.encode("ascii") + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")
    return Composed(headers, data)


def message_xml(message):
    """The message as xapi hands it to xapi-message-script: ``<message>`` with ref, name,
    priority, cls, obj_uuid, timestamp, uuid and body, no generation."""
    values = (("ref", message["ref"]), ("name", message["name"]),
              ("priority", str(message["priority"])), ("cls", message["cls"]),
              ("obj_uuid", message["obj_uuid"]), ("timestamp", message["timestamp"]),
              ("uuid", message["uuid"]), ("body", message["body"]))
    inner = "".join(f"<{tag}>{str(value).translate(_XML_ESCAPES)}</{tag}>"
                    for tag, value in values)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<message>{inner}</message>'
