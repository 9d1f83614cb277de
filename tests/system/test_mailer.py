"""xapi-mailer in a real tree, delivering to real aiosmtpd servers on 127.0.0.1 (free ports):
the priority filter, sender and destination, subjects and bodies, sanitised headers, STARTTLS
and login, the server down for a while, kill -9 of the mailer while the server is down and
during deliveries (one per SMTP connection), repeat folding, the hook script, `xapi-ctl mail
test|queue`. One tree for the module; messages are created with xapi-db's message.create, the
pool's mail settings written into its other_config with db.write_field."""

import asyncio
import collections
import email
import email.policy
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from .conftest import Tree, describe, wait_until

WAIT_S = 60.0
DOMAIN = "pool.example"
SENDER = f"xapi@{DOMAIN}"
DESTINATION = ["ops@example.com", "two@example.com"]
AUTH_USER, AUTH_PASS = "mailer", "s3cret"
CA_DOM0_PATH = "/etc/mailtest/ca.pem"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """A real aiosmtpd server on 127.0.0.1:<port> (aiosmtpd's Controller: its own thread and
    loop) that records what it receives. ``delay_s`` holds each DATA before the reply, after it
    has been recorded (the e-mail is then "in flight" for its sender)."""

    def __init__(self, tls_context=None, auth=False):
        self.port = free_port()
        self.tls_context = tls_context
        self.auth = auth
        self.received = []
        self.lock = threading.Lock()
        self.delay_s = 0.0
        self.controller = None

    async def handle_DATA(self, server, session, envelope):
        mail = email.message_from_bytes(envelope.original_content or envelope.content,
                                        policy=email.policy.default)
        with self.lock:
            self.received.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                  "mail": mail, "tls": session.ssl is not None,
                                  "authenticated": session.authenticated,
                                  "at": time.time()})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, data):
        ok = data.login == AUTH_USER.encode() and data.password == AUTH_PASS.encode()
        return AuthResult(success=ok, handled=False)   # aiosmtpd then answers 535 itself

    def start(self):
        kwargs = {}
        if self.tls_context is not None:
            kwargs.update(tls_context=self.tls_context, require_starttls=True)
        if self.auth:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=True)
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def mails(self, predicate=lambda m: True):
        with self.lock:
            return [r for r in self.received if predicate(r)]

    def with_name(self, name):
        return self.mails(lambda r: r["mail"]["X-Xapi-Message"].split()[0] == name)


def make_tls_context(directory):
    """A self-signed certificate for 127.0.0.1 (openssl), as the server's and as the CA."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


@pytest.fixture(scope="module")
def env():
    tree = Tree()
    sinks = []
    try:
        tree.init()
        tree.configure(mail_retry_initial=0.2, mail_retry_max=1.0, mail_events_wait=2.0)
        done = tree.up()
        assert done.returncode == 0, describe(done)
        sink = Sink()
        sinks.append(sink)
        sink.start()
        os.makedirs(tree.paths.under("/etc/mailtest"), exist_ok=True)
        context, cert = make_tls_context(str(tree.paths.under("/etc/mailtest")))
        os.replace(cert, tree.paths.under(CA_DOM0_PATH))
        secure = Sink(tls_context=context, auth=True)
        sinks.append(secure)
        secure.start()
        env = Env(tree, sink, secure)
        env.set_mail(**env.base_settings())
        yield env
    finally:
        for sink in sinks:
            sink.stop()
        tree.cleanup()


class Env:
    def __init__(self, tree, sink, secure):
        self.tree, self.sink, self.secure = tree, sink, secure
        self.pool = tree.call("xapi-db", "db.read_refs", "pool")[0]
        host = tree.call("xapi-db", "db.read_refs", "host")[0]
        self.host_uuid = tree.call("xapi-db", "db.read_field", "host", host, "uuid")
        self.host_ref = host
        self.serial = 0

    def base_settings(self):
        return {"mail-destination": "ops@example.com, Second <two@example.com>",
                "mail-sender": SENDER, "mail-min-priority": "3", "mail-inhibit-period": "0",
                "ssmtp-mailhub": f"127.0.0.1:{self.sink.port}", "ssmtp-usestarttls": None,
                "ssmtp-authuser": None, "ssmtp-authpass": None, "ssmtp-tls_ca_file": None}

    def set_mail(self, **keys):
        """Merge keys into the pool's other_config (None removes one)."""
        oc = self.tree.call("xapi-db", "db.read_field", "pool", self.pool, "other_config")
        for key, value in keys.items():
            key = key.replace("_", "-") if key.startswith(("mail_", "ssmtp_")) else key
            if value is None:
                oc.pop(key, None)
            else:
                oc[key] = value
        self.tree.call("xapi-db", "db.write_field", "pool", self.pool, "other_config", oc)

    def create(self, name, priority, body="", cls="Host", obj_uuid=None):
        """message.create on xapi-db; returns the message's uuid."""
        ref = self.tree.call("xapi-db", "message.create", name, priority, cls,
                             obj_uuid or self.host_uuid, body)
        records = self.tree.call("xapi-db", "message.get_all_records")
        return records[ref]["uuid"]

    def unique(self, stem):
        self.serial += 1
        return f"{stem}_{self.serial}"

    def queue(self):
        return self.tree.call("xapi-mailer", "mail.queue")

    def wait_queue_empty(self, timeout_s=WAIT_S):
        return wait_until(lambda: (q := self.queue())["count"] == 0 and q, timeout_s,
                          "an empty outbox")

    def mailer_pid(self):
        return self.tree.supervisor.info("xapi-mailer")["pid"]

    def kill_mailer(self):
        """kill -9 of xapi-mailer; returns once its successor is ready with mail.start
        replayed."""
        old = self.mailer_pid()
        os.kill(old, signal.SIGKILL)

        def back():
            health = self.tree.health("xapi-mailer", timeout_s=2.0)
            return (health["pid"] != old and health.get("following")
                    and any(c["m"] == "mail.start" for c in health["applied"]))
        wait_until(back, WAIT_S, "xapi-mailer restarted with mail.start replayed")
        return old


@pytest.fixture
def mail(env):
    """Each test starts with the plain server up, the base settings and an empty outbox."""
    env.sink.delay_s = 0.0
    if env.sink.controller is None:
        env.sink.start()
    env.set_mail(**env.base_settings())
    env.wait_queue_empty()
    yield env
    env.sink.delay_s = 0.0
    if env.sink.controller is None:
        env.sink.start()


def text(mail):
    """The body as text with LF line ends (it travels with CR LF)."""
    return mail.get_content().replace("\r\n", "\n")


def header_lines(record):
    raw = record["mail"].as_string()
    return raw.split("\n\n", 1)[0]


def test_mail_start_is_a_replayed_command_and_the_step_is_not_pending(env):
    health = env.tree.health("xapi-mailer")
    assert any(c["m"] == "mail.start" for c in health["applied"]), health
    assert health["following"] is True
    steps = {s["name"]: s for s in env.tree.status()["steps"]}
    step = steps["Start message e-mailing thread"]
    assert step["status"] == "ok", step
    assert env.tree.paths.mailer_state.exists()


def test_priority_filter_sender_destination_subject_and_body(mail):
    quiet4, quiet5 = mail.unique("QUIET_MINOR"), mail.unique("QUIET_INFO")
    mail.create(quiet4, 4, "not mailed")
    mail.create(quiet5, 5, "not mailed")
    alarm_body = ('value: 0.934000\nconfig:\n&lt;variable&gt;&lt;name value="cpu_usage"/&gt;'
                  '&lt;alarm_trigger_level value="0.9"/&gt;&lt;alarm_trigger_period '
                  'value="60"/&gt;&lt;/variable&gt;')
    alarm = mail.create("ALARM", 2, alarm_body)
    ha = mail.create("HA_HOST_FAILED", 1, "Host 'h1' has failed.")
    generic_name = mail.unique("SOMETHING_ODD")
    generic = mail.create(generic_name, 3, "Ünïcode body\nsecond line")
    wait_until(lambda: mail.sink.with_name(generic_name), WAIT_S, "the priority-3 e-mail")
    # Messages are taken in order: by the time the last is mailed, the ones above 3 were
    # passed over.
    assert mail.sink.with_name(quiet4) == [] and mail.sink.with_name(quiet5) == []
    wait_until(lambda: mail.sink.with_name("ALARM") and mail.sink.with_name("HA_HOST_FAILED"),
               WAIT_S, "the ALARM and HA_HOST_FAILED e-mails")
    host_name = mail.tree.call("xapi-db", "db.read_field", "host", mail.host_ref, "name_label")
    by_uuid = {r["mail"]["Message-ID"]: r for r in mail.sink.mails()}
    for uuid in (alarm, ha, generic):
        record = by_uuid[f"<{uuid}@{DOMAIN}>"]
        assert record["from"] == SENDER
        assert sorted(record["to"]) == sorted(DESTINATION)
        assert record["mail"]["From"] == SENDER
        assert "ops@example.com" in record["mail"]["To"]
        assert record["mail"].get_content_charset() == "utf-8"
        assert record["mail"]["Auto-Submitted"] == "auto-generated"
        assert uuid in text(record["mail"])
    a = by_uuid[f"<{alarm}@{DOMAIN}>"]["mail"]
    assert a["Subject"].endswith(f'Alarm: CPU usage on Host "{host_name}"'), a["Subject"]
    assert "0.934" in text(a) and "0.9" in text(a)
    h = by_uuid[f"<{ha}@{DOMAIN}>"]["mail"]
    assert "HA Alarm: Host 'h1' has failed." in h["Subject"]
    g = by_uuid[f"<{generic}@{DOMAIN}>"]["mail"]
    assert f'Message: {generic_name} on Host "{host_name}"' in g["Subject"]
    assert "Ünïcode body\nsecond line" in text(g)
    assert "Priority:\t3 (warning)" in text(g)


def test_default_sender_and_no_destination(mail):
    mail.set_mail(**{"mail-sender": None})
    name = mail.unique("DEFAULT_SENDER")
    mail.create(name, 1, "x")
    record = wait_until(lambda: mail.sink.with_name(name), WAIT_S, "the e-mail")[0]
    assert record["from"].startswith("noreply@") and record["mail"]["From"] == record["from"]
    mail.set_mail(**{"mail-destination": None})
    nowhere = mail.unique("NO_DESTINATION")
    mail.create(nowhere, 1, "x")
    wait_until(lambda: mail.tree.call("xapi-mailer", "sys.stats")["no_destination"] >= 1,
               WAIT_S, "the message counted as not mailed for want of a destination")
    assert mail.queue()["count"] == 0 and mail.sink.with_name(nowhere) == []


def test_header_injection_is_sanitised(mail):
    old = mail.tree.call("xapi-db", "db.read_field", "host", mail.host_ref, "name_label")
    mail.tree.call("xapi-db", "db.write_field", "host", mail.host_ref, "name_label",
                   "evil\r\nBcc: thief@evil.example")
    try:
        name = mail.unique("INJECTED")
        uuid = mail.create(name, 1, "body\r\nwith CR LF\rand CR\tand a tab")
        record = wait_until(lambda: mail.sink.with_name(name), WAIT_S, "the e-mail")[0]
    finally:
        mail.tree.call("xapi-db", "db.write_field", "host", mail.host_ref, "name_label", old)
    assert sorted(record["to"]) == sorted(DESTINATION)
    headers = header_lines(record)
    assert "\nBcc:" not in headers and record["mail"]["Bcc"] is None
    assert 'Host "evil Bcc: thief@evil.example"' in record["mail"]["Subject"]
    assert "body\nwith CR LF\nand CR\tand a tab" in text(record["mail"])
    assert record["mail"]["Message-ID"] == f"<{uuid}@{DOMAIN}>"


def test_starttls_and_login(mail):
    port = mail.secure.port
    mail.set_mail(**{"ssmtp-mailhub": f"127.0.0.1:{port}", "ssmtp-usestarttls": "YES",
                     "ssmtp-authuser": AUTH_USER, "ssmtp-authpass": "wrong",
                     "ssmtp-tls_ca_file": CA_DOM0_PATH})
    name = mail.unique("OVER_TLS")
    mail.create(name, 2, "secret")
    # A refused login keeps the e-mail in the outbox, retried, the cause visible.
    queue = wait_until(lambda: (q := mail.queue())["entries"] and q["entries"][0]["last_error"]
                       and q, WAIT_S, "the refused login in the queue")
    assert "login as mailer refused" in queue["entries"][0]["last_error"], queue
    done = mail.tree.ctl("mail", "queue")
    assert done.returncode == 0 and name in done.stdout and "refused" in done.stdout, \
        describe(done)
    mail.set_mail(**{"ssmtp-authpass": AUTH_PASS})
    record = wait_until(lambda: mail.secure.with_name(name), WAIT_S, "the e-mail over TLS")[0]
    assert record["tls"] and record["authenticated"]
    assert mail.sink.with_name(name) == []
    done = mail.tree.ctl("mail", "test")
    assert done.returncode == 0, describe(done)
    assert f"127.0.0.1:{port} with STARTTLS, logged in as mailer" in done.stdout
    wait_until(lambda: mail.secure.with_name("MAIL_TEST"), WAIT_S, "the test e-mail")


def test_ctl_mail_test_and_its_failure(mail):
    done = mail.tree.ctl("mail", "test", "--to", "someone@example.org")
    assert done.returncode == 0, describe(done)
    assert "accepted by 127.0.0.1" in done.stdout
    record = wait_until(lambda: [r for r in mail.sink.with_name("MAIL_TEST")
                                 if r["to"] == ["someone@example.org"]], WAIT_S, "it")[0]
    assert "test e-mail" in text(record["mail"])
    mail.sink.stop()
    done = mail.tree.ctl("mail", "test")
    assert done.returncode == 1, describe(done)
    assert "MAIL_TEST_FAILED" in done.stderr and f"127.0.0.1:{mail.sink.port}" in done.stderr


def _exactly_once(sink, uuids):
    ids = collections.Counter(r["mail"]["Message-ID"] for r in sink.mails())
    return {uuid: ids[f"<{uuid}@{DOMAIN}>"] for uuid in uuids}


def test_server_down_then_back_every_message_once(mail):
    mail.sink.stop()
    uuids = [mail.create(mail.unique("WHILE_DOWN"), 2, "x") for _ in range(5)]
    queue = wait_until(lambda: (q := mail.queue())["count"] == 5 and q["last_error"] and q,
                       WAIT_S, "five entries waiting, with the failure")
    assert "ConnectionRefusedError" in queue["last_error"], queue
    mail.sink.start()
    mail.wait_queue_empty()
    assert _exactly_once(mail.sink, uuids) == dict.fromkeys(uuids, 1)


def test_kill_mailer_while_server_down_nothing_lost_no_duplicate(mail):
    mail.sink.stop()
    uuids = [mail.create(mail.unique("KILLED_WHILE_DOWN"), 1, "x") for _ in range(5)]
    wait_until(lambda: mail.queue()["count"] == 5, WAIT_S, "five entries in the outbox")
    mail.kill_mailer()
    assert mail.queue()["count"] == 5
    # Messages created while the mailer was away are caught up from its saved token.
    more = [mail.create(mail.unique("KILLED_WHILE_DOWN"), 1, "x") for _ in range(2)]
    wait_until(lambda: mail.queue()["count"] == 7, WAIT_S, "seven entries in the outbox")
    mail.sink.start()
    mail.wait_queue_empty()
    assert _exactly_once(mail.sink, uuids + more) == dict.fromkeys(uuids + more, 1)


def test_kill_mailer_during_delivery_at_most_the_in_flight_ones_twice(mail):
    connections = 4               # xapi.conf's default mail-smtp-connections
    mail.sink.delay_s = 30.0      # the server holds each DATA: the mailer is mid-delivery
    uuids = [mail.create(mail.unique("KILLED_IN_FLIGHT"), 1, "x") for _ in range(6)]
    ids = {f"<{u}@{DOMAIN}>" for u in uuids}
    # one e-mail on each connection at once, each a different one; the rest wait their turn
    held = wait_until(lambda: len(r := mail.sink.mails(lambda r: r["mail"]["Message-ID"] in ids))
                      >= connections and r, WAIT_S, "an e-mail in flight on each connection")
    queue = mail.queue()
    assert sorted(e["message_uuid"] for e in queue["entries"] if e["in_flight"]) == sorted(
        r["mail"]["Message-ID"][1:].split("@")[0] for r in held), queue
    mail.sink.delay_s = 0.0       # for what follows; the e-mails in flight are held already
    mail.kill_mailer()
    mail.wait_queue_empty()
    counts = _exactly_once(mail.sink, uuids)
    assert all(counts[u] >= 1 for u in uuids), counts          # nothing lost
    twice = {f"<{u}@{DOMAIN}>" for u in uuids if counts[u] > 1}
    held_ids = {r["mail"]["Message-ID"] for r in held}
    # only the e-mails in flight at the kill go twice, at most one per connection, with the
    # same Message-ID
    assert len(held_ids) == len(held) <= connections, held_ids
    assert twice <= held_ids and all(counts[u] <= 2 for u in uuids), counts


def test_inhibit_period_folds_repeats(mail):
    period = 6.0
    mail.set_mail(**{"mail-inhibit-period": str(period)})
    name = mail.unique("REPEATED")
    uuids = [mail.create(name, 2, f"occurrence {i}") for i in range(4)]
    other = mail.unique("NOT_REPEATED")
    mail.create(other, 2, "once")
    first = wait_until(lambda: mail.sink.with_name(name), WAIT_S, "the first e-mail")[0]
    assert first["mail"]["Message-ID"] == f"<{uuids[0]}@{DOMAIN}>"
    # the repeats are taken in one batch or several; they all land in one fold entry
    folds = wait_until(lambda: [e for e in mail.queue()["entries"] if e["kind"] == "fold"
                                and e["repeats"] == 3], WAIT_S, "the three repeats folded")
    assert len(folds) == 1, folds
    records = wait_until(lambda: len(r := mail.sink.with_name(name)) >= 2 and r, WAIT_S + period,
                         "the folded e-mail")
    mail.wait_queue_empty()
    records = mail.sink.with_name(name)
    assert len(records) == 2, [r["mail"]["Subject"] for r in records]
    folded = records[1]["mail"]
    assert folded["Message-ID"] == f"<{uuids[1]}.repeats@{DOMAIN}>"
    assert "(repeated 3 times)" in folded["Subject"]
    assert "occurrence 3" in text(folded)
    assert records[1]["at"] - records[0]["at"] >= period * 0.5
    assert len(mail.sink.with_name(other)) == 1


def test_hook_script_gets_the_message_xml_and_a_failure_is_retried(mail):
    tree = mail.tree
    out_dir = tree.paths.under("/tmp/hook-out")
    os.makedirs(out_dir, exist_ok=True)
    script = tree.paths.under("/opt/xensource/libexec/mail-hook")
    os.makedirs(script.parent, exist_ok=True)
    script.write_text(f"""#!/bin/sh
if [ ! -e {out_dir}/failed-once ]; then
    touch {out_dir}/failed-once
    echo "boom: cannot reach the relay" >&2
    exit 3
fi
printf '%s' "$1" > {out_dir}/$$.xml
""")
    script.chmod(0o755)
    conf = tree.paths.xapi_conf_d / "50-mail-hook.conf"
    conf.write_text("xapi-message-script = /opt/xensource/libexec/mail-hook\n")
    try:
        done = tree.ctl("restart", "xapi-mailer")
        assert done.returncode == 0, describe(done)
        name = mail.unique("TO_THE_HOOK")
        uuid = mail.create(name, 5, "a <b> & c")     # the hook gets every message, as xapi's
        files = wait_until(lambda: [f for f in os.listdir(out_dir) if f.endswith(".xml")],
                           WAIT_S, "the hook's output")
        xml = open(os.path.join(out_dir, files[0])).read()
        assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<message><ref>')
        assert f"<name>{name}</name><priority>5</priority><cls>Host</cls>" in xml
        assert f"<uuid>{uuid}</uuid><body>a &lt;b&gt; &amp; c</body></message>" in xml
        mail.wait_queue_empty()
        log = "\n".join(tree.log_lines("xapi-mailer"))
        assert "exited with code 3; stderr: boom: cannot reach the relay" in log
        assert mail.sink.with_name(name) == []
    finally:
        conf.unlink()
        done = tree.ctl("restart", "xapi-mailer")
        assert done.returncode == 0, describe(done)


def test_queue_json_lists_entries(mail):
    mail.sink.stop()
    name = mail.unique("LISTED")
    mail.create(name, 1, "x")
    wait_until(lambda: mail.queue()["count"] == 1, WAIT_S, "the entry")
    done = mail.tree.ctl("mail", "queue", "--json")
    assert done.returncode == 0, describe(done)
    data = json.loads(done.stdout)
    assert data["entries"][0]["name"] == name and data["entries"][0]["to"] == DESTINATION
    mail.sink.start()
    mail.wait_queue_empty()
