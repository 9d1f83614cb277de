"""xapi-message-script: run as xapi runs it (xen-api ``xapi_message.ml``, handle_message:
``execute_command_get_output script [message_xml]``): the message XML is the one argument.
A non-zero exit, a signal or a timeout is a DeliveryError carrying the exit code and the end
of stderr, retried like an SMTP failure."""

import os
import subprocess

from daemons.mailer.smtp import DeliveryError

STDERR_TAIL_CHARS = 2000


def usable(path):
    """True if ``path`` is a file this process may execute."""
    return path.is_file() and os.access(path, os.X_OK)


def run_hook(path, xml, timeout_s, root):
    """Run the script with the message XML; returns its stdout (text); DeliveryError on any
    failure."""
    env = dict(os.environ, XAPI_ROOT=str(root))
    env.pop("NOTIFY_SOCKET", None)
    try:
        done = subprocess.run([str(path), xml], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout_s, env=env, cwd=str(root))
    except subprocess.TimeoutExpired as exc:
        raise DeliveryError(f"{path} did not finish within {timeout_s:g} s (killed); stderr: "
                            f"{_tail(exc.stderr)}") from None
    except OSError as exc:
        raise DeliveryError(f"cannot run {path}: {exc}") from None
    if done.returncode != 0:
        how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
               else f"exited with code {done.returncode}")
        raise DeliveryError(f"{path} {how}; stderr: {_tail(done.stderr)}")
    return done.stdout.decode("utf-8", "replace")


def _tail(data):
    text = (data or b"").decode("utf-8", "replace").strip()
    return text[-STDERR_TAIL_CHARS:] if text else "(empty)"
