"""xapi-api's client of xapi-db: every XenAPI call that reads or writes the database makes one
round trip through it, so it is the hot path of the daemon (common/rpc.AsyncRpcClient is built
lean for it). What is xapi-api's own is the retry rule: reads are sent again once within their
budget (a restarted xapi-db is found again by ZeroMQ; a lost request is sent again); writes are
not retried."""

from common.rpc import AsyncRpcClient

DB_TIMEOUT_S = 10.0


class DbClient(AsyncRpcClient):
    """xapi-db over the bus, from one asyncio loop."""

    READS = frozenset(("db.read_refs", "db.read_field", "db.read_record", "db.get_by_uuid",
                       "db.get_by_name_label", "db.read_records_where", "db.token",
                       "db.touch_session", "message.get_all_records", "message.get_since"))

    def __init__(self, endpoint, timeout_s=DB_TIMEOUT_S, context=None):
        super().__init__(endpoint, context=context, timeout_s=timeout_s)

    async def call(self, method, *args, timeout_s=None):
        return await super().call(method, *args, timeout_s=timeout_s,
                                  retries=1 if method in self.READS else 0)
