"""xapi-mailer's e-mail composition and settings: subjects and bodies per kind, sanitising,
Message-ID, the hook's XML, and the pool's other_config keys."""

import email
import email.policy

import pytest

from daemons.mailer import compose, settings

HOST = "2e00443d-ac29-4940-8433-a15dda1e8f8e"


def entry(name="SOMETHING", body="the body", kind="mail", **extra):
    e = {"seq": 1, "kind": kind, "sender": "xapi@pool.example", "to": ["ops@example.com"],
         "charset": "utf-8", "pool_name": "Pool One", "obj_name": "host-1",
         "message": {"ref": "OpaqueRef:1", "uuid": "11111111-2222-3333-4444-555555555555",
                     "name": name, "priority": 2, "cls": "Host", "obj_uuid": HOST,
                     "timestamp": "20250319T04:16:24Z", "body": body}}
    e.update(extra)
    return e


def parsed(e):
    return email.message_from_bytes(compose.compose(e).data, policy=email.policy.default)


def content(mail):
    return mail.get_content().replace("\r\n", "\n")


def test_generic_message():
    mail = parsed(entry())
    assert mail["Subject"] == '[Pool One] XenServer Message: SOMETHING on Host "host-1"'
    assert mail["From"] == "xapi@pool.example" and mail["To"] == "ops@example.com"
    assert mail["Message-ID"] == "<11111111-2222-3333-4444-555555555555@pool.example>"
    assert mail["Date"] == "Wed, 19 Mar 2025 04:16:24 +0000"
    text = content(mail)
    assert "Priority:\t2 (major)" in text and f"Object UUID:\t{HOST}" in text
    assert text.rstrip().endswith("Body:\nthe body")


def test_alarm_names_the_data_source_and_levels():
    body = ('value: 0.934000\nconfig:\n&lt;variable&gt;&lt;name value="memory_free_kib"/&gt;'
            '&lt;alarm_trigger_level value="1024"/&gt;&lt;alarm_trigger_period value="60"/&gt;'
            '&lt;/variable&gt;')
    mail = parsed(entry("ALARM", body))
    assert mail["Subject"] == '[Pool One] XenServer Alarm: Free memory on Host "host-1"'
    text = content(mail)
    assert "has been 0.934 on average for the last 60 seconds" in text
    assert "triggered at 1024 (data source memory_free_kib)" in text


def test_alarm_with_an_unreadable_body_is_generic():
    mail = parsed(entry("ALARM", "not an alarm body"))
    assert mail["Subject"] == '[Pool One] XenServer Message: ALARM on Host "host-1"'


def test_ha_host_failed_and_master_transition():
    mail = parsed(entry("HA_HOST_FAILED", "Host h2 failed\nmore"))
    assert mail["Subject"] == "[Pool One] XenServer HA Alarm: Host h2 failed more"
    assert "high-availability pool fails" in content(mail)
    mail = parsed(entry("POOL_MASTER_TRANSITION", "This host is now the pool master."))
    assert mail["Subject"] == '[Pool One] XenServer: Host "host-1" is now the pool master'
    assert "This host is now the pool master." in content(mail)


def test_headers_are_sanitised():
    e = entry("X", obj_name="a\r\nBcc: thief@evil\x00\u2028z", pool_name="p\nq" + "w" * 300)
    mail = parsed(e)
    assert mail["Bcc"] is None
    assert 'on Host "a Bcc: thief@evil z"' in mail["Subject"]
    assert mail["Subject"].startswith("[p q" + "w" * 100) and "..." in mail["Subject"]
    raw = compose.compose(e).data
    headers = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc" not in headers and b"\n\n" not in headers


def test_body_control_characters_and_length():
    text = compose.body_text("a\r\nb\rc\x00d\x1be\tf\ud800g")
    assert text == "a\nb\ncde\tfg"
    long = compose.body_text("x" * (compose.MAX_BODY_CHARS + 10))
    assert long.endswith("[... 10 more characters not shown]")


def test_charset_other_than_utf8():
    mail = parsed(entry(body="snow ☃ é", charset="iso8859-1"))
    assert mail.get_content_charset() == "iso8859-1"
    assert "snow ? é" in content(mail)


def test_fold_entry():
    e = entry(kind="fold", fold={"count": 3, "first": "20250319T04:16:25Z",
                                 "last": "20250319T04:20:00Z", "first_uuid": "abc",
                                 "inhibit_s": 3600.0, "key": ["SOMETHING", "Host", HOST]})
    mail = parsed(e)
    assert mail["Message-ID"] == "<abc.repeats@pool.example>"
    assert mail["Subject"].endswith("(repeated 3 times)")
    assert "raised 3 more time(s) between 20250319T04:16:25Z and 20250319T04:20:00Z" in \
        content(mail)


def test_message_xml_as_xapi_gives_it_to_the_hook():
    xml = compose.message_xml(entry(body="a<b>&c")["message"])
    assert xml == ('<?xml version="1.0" encoding="UTF-8"?>\n<message>'
                   "<ref>OpaqueRef:1</ref><name>SOMETHING</name><priority>2</priority>"
                   f"<cls>Host</cls><obj_uuid>{HOST}</obj_uuid>"
                   "<timestamp>20250319T04:16:24Z</timestamp>"
                   "<uuid>11111111-2222-3333-4444-555555555555</uuid>"
                   "<body>a&lt;b&gt;&amp;c</body></message>")


def test_settings_defaults():
    s = settings.parse({}, pool_name="p", fqdn="h.example")
    assert s.destination == () and s.sender == "noreply@h.example"
    assert s.min_priority == 3 and s.inhibit_s == 3600.0 and s.charset == "utf-8"
    assert s.mailhub is None and not s.starttls and not s.tls and s.problems == ()


def test_settings_values():
    s = settings.parse({"mail-destination": "a@x.org, B <b@y.org>", "mail-sender": "me@x.org",
                        "mail-min-priority": "2", "mail-inhibit-period": "60",
                        "ssmtp-mailhub": "smtp.x.org:587", "ssmtp-usestarttls": "YES",
                        "ssmtp-authuser": "u", "ssmtp-authpass": "Zekr3t",
                        "mail-charset": "latin-1"})
    assert s.destination == ("a@x.org", "b@y.org") and s.sender == "me@x.org"
    assert (s.min_priority, s.inhibit_s, s.mailhub) == (2, 60.0, ("smtp.x.org", 587))
    assert s.starttls and (s.auth_user, s.auth_pass) == ("u", "Zekr3t")
    assert s.charset == "iso8859-1" and s.problems == ()
    assert "Zekr3t" not in repr(s)   # the password stays out of logs


@pytest.mark.parametrize("key,value,fragment", [
    ("mail-min-priority", "high", "expected an integer, got 'high'; using 3"),
    ("mail-inhibit-period", "-5", "expected seconds"),
    ("ssmtp-mailhub", "host:99999", "bad port '99999'"),
    ("ssmtp-mailhub", "ho st", "bad host"),
    ("mail-destination", "not-an-address", "not an e-mail address: 'not-an-address'"),
    ("mail-destination", "a@b.c\r\nBcc: x@y.z", "not an e-mail address"),
    ("mail-sender", "a@b.c, d@e.f", "expected one e-mail address"),
    ("mail-charset", "klingon", "unknown charset 'klingon'"),
    ("ssmtp-usestarttls", "perhaps", "expected yes or no, got 'perhaps'"),
])
def test_settings_bad_values_name_the_key(key, value, fragment):
    s = settings.parse({key: value})
    assert [k for k, _ in s.problems] == [key]
    assert fragment in s.problems[0][1]


def test_mailhub_forms():
    assert settings.parse_mailhub("mail") == ("mail", 25)
    assert settings.parse_mailhub("[::1]:2525") == ("::1", 2525)
    with pytest.raises(ValueError):
        settings.parse_mailhub("[::1")
