"""What the start-up steps share: the host's files as read once per run."""

from dataclasses import dataclass, field

from common.paths import Paths
from common.rpc import RpcClient


@dataclass
class HostContext:
    paths: Paths
    config: object                     # common.config.Config
    role: object                       # common.poolconf.Role
    args: object                       # the parsed command line
    log: object
    inventory: dict = field(default_factory=dict)
    local_db: object = None            # common.localdb.LocalDB
    pool_secret: str | None = None
    license: object = None             # common.license.License
    system_boot: bool = False          # first start since the machine booted
    db_connections: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)   # facts a step records for status

    def rpc(self, program="xapi-db"):
        """A blocking client for a step's calls to ``program`` (steps run in a worker
        thread), bounded by the option command-timeout; use it in a ``with``."""
        return RpcClient(self.paths.rpc_endpoint(program), timeout_s=self.config["command-timeout"])
