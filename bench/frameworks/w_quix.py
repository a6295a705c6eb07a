"""(b) Quix Streams worker: processing_guarantee="exactly-once", commit_interval 0.1 s,
RocksDB state with changelog topics (the default), one Application (one consumer, one
transactional producer) running the H hops as H StreamingDataFrames.

Each hop: ``sdf.apply(fn, stateful=True)`` (parse, one ``state.set``), then
``to_topic(next, key=...)``. Values stay bytes end to end like faust's raw serializers: the
state store's dumps/loads are the identity (the default would JSON-encode with orjson), and
the output serializer takes the bytes out of the (key, value) pair ``fn`` returns.

Run with .venv-qs:  python bench/frameworks/w_quix.py BOOTSTRAP PREFIX H STATUS DIR
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import step, worker_args


def main() -> None:
    import orjson
    from quixstreams import Application
    from quixstreams.models.serializers import Serializer
    from quixstreams.state.rocksdb import RocksDBOptions

    bootstrap, prefix, h, status, state_dir, commit = worker_args()

    class PairValue(Serializer):
        """The value of the (output key, output value) pair a hop returns."""

        def __call__(self, value, ctx):
            return value[1]

    def dumps(v):
        return v if isinstance(v, bytes) else orjson.dumps(v)

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"fw-quix-{prefix}",
        processing_guarantee="exactly-once",
        commit_interval=commit,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        rocksdb_options=RocksDBOptions(dumps=dumps, loads=lambda v: v),
        use_changelog_topics=True,
        loglevel="WARNING",
        consumer_extra_config={"fetch.wait.max.ms": 20},
    )
    topics = [
        app.topic(
            f"{prefix}.{i}",
            key_deserializer="bytes",
            value_deserializer="bytes",
            key_serializer="bytes",
            value_serializer=PairValue(),
        )
        for i in range(h + 1)
    ]

    def make(i: int) -> None:
        def hop(value: bytes, state) -> tuple[bytes, bytes]:
            status.first()
            st, out_key, out = step(value, i)
            state.set("s", st)  # the state of this message's key
            return out_key, out

        sdf = app.dataframe(topics[i])
        sdf = sdf.apply(hop, stateful=True)
        sdf.to_topic(topics[i + 1], key=lambda pair: pair[0])

    for i in range(h):
        make(i)
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app.run()


if __name__ == "__main__":
    main()
