"""SMTP delivery with smtplib to the pool's ``ssmtp-mailhub``: one connection kept open while
mail flows (re-made when the settings change or the server dropped it), STARTTLS or TLS from
the first byte, and login, as the ``ssmtp-*`` keys say. Runs in one thread of its own.

A failure is a DeliveryError: ``per_message`` when the server refused this e-mail (a 5xx to
its sender, recipients or data: other e-mails can still go), else the server is unreachable or
refusing everything and the whole outbox waits.
"""

import smtplib
import socket
import ssl


class DeliveryError(Exception):
    def __init__(self, text, per_message=False):
        super().__init__(text)
        self.per_message = per_message


class SmtpTransport:
    def __init__(self, timeout_s, resolve_path, local_hostname="localhost"):
        self.timeout_s = timeout_s
        self.resolve_path = resolve_path      # dom0 path -> path under ROOT
        self.local_hostname = local_hostname
        self._conn = None
        self._key = None
        self.connects = 0

    @property
    def connected(self):
        return self._conn is not None

    def close(self):
        conn, self._conn, self._key = self._conn, None, None
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()

    def _open(self, settings):
        host, port = settings.mailhub
        where = f"{host}:{port}"
        context = None
        if settings.tls or settings.starttls:
            cafile = self.resolve_path(settings.ca_file) if settings.ca_file else None
            try:
                context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise DeliveryError(f"cannot read ssmtp-tls_ca_file {cafile}: {exc}") from None
        try:
            if settings.tls:
                conn = smtplib.SMTP_SSL(host.strip("[]"), port, timeout=self.timeout_s,
                                        local_hostname=self.local_hostname, context=context)
            else:
                conn = smtplib.SMTP(host.strip("[]"), port, timeout=self.timeout_s,
                                    local_hostname=self.local_hostname)
            try:
                conn.ehlo()
                if settings.starttls and not settings.tls:
                    conn.starttls(context=context)
                    conn.ehlo()
                if settings.auth_user:
                    conn.login(settings.auth_user, settings.auth_pass or "")
            except BaseException:
                conn.close()
                raise
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"{where}: login as {settings.auth_user} refused: "
                                f"{exc.smtp_code} {_text(exc.smtp_error)}") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc} (ssmtp-usestarttls or ssmtp-authuser asks "
                                "for what the server does not offer)") from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{where}: {exc.smtp_code} {_text(exc.smtp_error)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}") from None
        self.connects += 1
        return conn

    def send(self, settings, sender, recipients, data):
        """Send one e-mail; returns the recipients the server refused (the others accepted
        it). A connection kept from an earlier e-mail that the server has since dropped is
        re-made once."""
        if settings.mailhub is None:
            raise DeliveryError("no SMTP server: the pool's other_config has no valid "
                                "ssmtp-mailhub")
        for attempt in (1, 2):
            reused = self._conn is not None and self._key == settings.transport_key
            if not reused:
                self.close()
                self._conn = self._open(settings)
                self._key = settings.transport_key
            try:
                refused = self._conn.sendmail(sender, list(recipients), data)
                return sorted(refused)
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if reused and attempt == 1:
                    continue
                raise DeliveryError(f"{_where(settings)}: disconnected: {exc}") from None
            except smtplib.SMTPRecipientsRefused as exc:
                codes = {code for code, _ in exc.recipients.values()}
                raise DeliveryError(
                    f"{_where(settings)}: every recipient refused: " + "; ".join(
                        f"{rcpt} {code} {_text(msg)}" for rcpt, (code, msg)
                        in exc.recipients.items()),
                    per_message=all(code >= 500 for code in codes)) from None
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                self._reset()
                raise DeliveryError(f"{_where(settings)}: {exc.smtp_code} "
                                    f"{_text(exc.smtp_error)}",
                                    per_message=exc.smtp_code >= 500) from None
            except (smtplib.SMTPException, OSError) as exc:
                self._drop()
                raise DeliveryError(f"{_where(settings)}: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    def _drop(self):
        conn, self._conn, self._key = self._conn, None, None
        if conn is not None:
            conn.close()

    def _reset(self):
        try:
            self._conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()


def _where(settings):
    host, port = settings.mailhub
    return f"{host}:{port}"


def _text(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())


def default_local_hostname():
    """The name this host gives in EHLO (socket.getfqdn may ask DNS: called once, off the
    loop)."""
    try:
        return socket.getfqdn() or "localhost"
    except OSError:
        return "localhost"
