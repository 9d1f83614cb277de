"""The error tree of xapi-py. Every error carries a XenAPI-style code and its parameters.

    XapiError(code, *params)          anything that can travel to an API client unchanged
     ├── ConfigError                  a bad file or option: names file, line, key (exit 1)
     ├── RpcError                     a call between daemons failed
     │    ├── RpcTimeout              no reply before the deadline (RPC_TIMEOUT)
     │    └── RpcProtocolError        a frame that is not a valid envelope (MESSAGE_DECODE_ERROR)
     └── StepFailed                   a start-up step failed (STARTUP_STEP_FAILED)

``error.description`` is the list ``[code, param, ...]``, XenAPI's ErrorDescription.
"""


class XapiError(Exception):
    """An error with a XenAPI code and string parameters."""

    code = "INTERNAL_ERROR"

    def __init__(self, code=None, *params):
        self.code = code or self.code
        self.params = [str(p) for p in params]
        super().__init__(self.code, *self.params)

    @property
    def description(self):
        return [self.code, *self.params]

    def __str__(self):
        if not self.params:
            return self.code
        return f"{self.code}: {' '.join(self.params)}"

    @classmethod
    def from_description(cls, description):
        """Rebuild an error from an ErrorDescription list received over the bus."""
        if not description:
            return cls("INTERNAL_ERROR", "empty error description")
        code, *params = description
        for sub in (RpcTimeout, RpcProtocolError, StepFailed):
            if code == sub.code:
                err = sub.__new__(sub)
                XapiError.__init__(err, code, *params)
                return err
        return cls(code, *params)


class ConfigError(XapiError):
    """A bad configuration file or option value. The message names the file, line and key."""

    code = "CONFIG_ERROR"

    def __init__(self, message, path=None, line=None, key=None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        if key is not None:
            message = f"key '{key}': {message}"
        super().__init__("CONFIG_ERROR", f"{where}{message}")
        self.path, self.line, self.key = path, line, key

    def __str__(self):
        return self.params[0]


class RpcError(XapiError):
    """A call between daemons failed."""

    code = "RPC_ERROR"


class RpcTimeout(RpcError):
    code = "RPC_TIMEOUT"

    def __init__(self, endpoint, method, timeout_s):
        super().__init__("RPC_TIMEOUT", endpoint, method, f"{timeout_s:g}")


class RpcProtocolError(RpcError):
    code = "MESSAGE_DECODE_ERROR"

    def __init__(self, reason):
        super().__init__("MESSAGE_DECODE_ERROR", reason)


class StepFailed(XapiError):
    code = "STARTUP_STEP_FAILED"

    def __init__(self, step, reason):
        super().__init__("STARTUP_STEP_FAILED", step, reason)
