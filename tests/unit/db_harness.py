"""The harness of the xapi-db engine tests: a short temp ROOT and the executor an Engine needs."""

import asyncio
import concurrent.futures
import shutil
import tempfile

from common.paths import Paths
from daemons.db.engine import Engine


class Env:
    """A short temp ROOT with its dirs, and the executor an Engine needs."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="x", dir="/tmp")
        self.paths = Paths(self.root)
        self.paths.make_dirs()
        self.executor = concurrent.futures.ThreadPoolExecutor(2)

    async def engine(self):
        engine = Engine(self.paths, self.executor)
        await engine.open()
        return engine

    def close(self):
        self.executor.shutdown(wait=True)
        shutil.rmtree(self.root, ignore_errors=True)


def run(env, body):
    """Run ``await body(engine)`` on a freshly opened engine, closed after unless the body
    closed or crashed it."""
    async def main():
        engine = await env.engine()
        try:
            return await body(engine)
        finally:
            if engine.redo._fd is not None:
                await engine.close()
    return asyncio.run(main())


# writes through the engine's writer (one round each); they return awaitables
def create(e, cls, values=None, ref=None):
    return e.write(lambda t: e.ops.create_row(t, cls, values or {}, ref))


def write(e, cls, ref, field, value):
    return e.write(lambda t: e.ops.write_field(t, cls, ref, field, value))


def delete(e, cls, ref):
    return e.write(lambda t: e.ops.delete_row(t, cls, ref))
