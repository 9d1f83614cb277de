"""xapi-init's control methods, called by xapi-ctl over xapi-init's ROUTER socket."""

import os
import time

from common import inventory


class Control:
    def __init__(self, daemon):
        self.daemon = daemon

    def register(self):
        d = self.daemon
        d.register("init.status", self.status)
        d.register("init.start", self.start)
        d.register("init.stop", self.stop)
        d.register("init.restart", self.restart)

    def status(self):
        d = self.daemon
        data = d.progress.data
        paths = d.paths
        host_uuid = None
        if d.ctx is not None and d.ctx.inventory:
            host_uuid = d.ctx.inventory.get(inventory.INSTALLATION_UUID)
        return {
            "host": {
                "uuid": host_uuid,
                "role": d.role.kind,
                "master_address": d.role.master_address,
                "role_reason": d.role.reason,
                "root": str(paths.root),
            },
            "init": {
                "pid": os.getpid(),
                "state": data.get("state"),
                "ready": paths.ready_cookie.exists(),
                "complete": paths.init_complete_cookie.exists(),
                "emergency": data.get("state") == "emergency",
                "error": data.get("error"),
                "failed_step": data.get("failed_step"),
                "retry_in_s": data.get("retry_in_s"),
                "started_at": data.get("started_at"),
                "completed_at": data.get("completed_at"),
                "uptime_s": round(time.time() - d.started_at, 3),
                "restarts": int(d.init_state.get("init_restarts", 0)),
            },
            "daemons": d.programs.status(),
            "steps": data.get("steps", []),
            "notes": data.get("notes", {}),
        }

    async def start(self, name):
        return await self.daemon.programs.start(name, self.daemon.config["ready-timeout"])

    async def stop(self, name):
        await self.daemon.programs.stop(name)
        return True

    async def restart(self, name):
        return await self.daemon.programs.restart(name, self.daemon.config["ready-timeout"])
