"""Throughput and compression of every update codec on a 1M-float vector.

Prints, per codec: payload bytes, compression ratio against ``dense_fp32``, the whole wire
message's bytes (header included), and encode / decode / sparse-decode throughput in MB/s
of float32 input (best of a few repeats)::

    python bench/bench_codecs.py [--n 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from fl_core import wire
from fl_core.codec import parse_codec
from fl_core.models import Layout

CODECS = (
    "dense_fp32",
    "fp16",
    "q8",
    "q4",
    "q2",
    "topk:0.01",
    "topk:0.01+fp16",
    "topk:0.01+q8",
    "topk:0.01+q4",
    "topk:0.1",
    "topk:0.1+q8",
)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass(frozen=True)
class Row:
    codec: str
    payload: int
    message: int
    ratio: float
    encode: float
    decode: float
    sparse: float | None


def bench(n: int, repeats: int) -> list[Row]:
    """One row of measurements per codec in :data:`CODECS`."""
    vector = np.random.default_rng(0).normal(size=n).astype(np.float32)
    layout = Layout(("params",), ((n,),))
    megabytes = 4 * n / 1e6
    rows = []
    for name in CODECS:
        codec = parse_codec(name)
        rng = np.random.default_rng(1)
        payload = codec.encode(vector, rng=rng)
        header = wire.Header(
            kind="update",
            campaign="bench",
            round=1,
            base_version=0,
            client="client_0000",
            codec=name,
            layout=layout,
            num_examples=1,
        )
        message = wire.encode(header, vector)
        encode_s = best_seconds(partial(codec.encode, vector, rng=rng), repeats)
        decode_s = best_seconds(partial(codec.decode, payload, n), repeats)
        sparse_s = best_seconds(partial(codec.decode_sparse, payload, n), repeats)
        rows.append(
            Row(
                codec=name,
                payload=len(payload),
                message=len(message),
                ratio=4 * n / len(payload),
                encode=megabytes / encode_s,
                decode=megabytes / decode_s,
                sparse=megabytes / sparse_s if codec.sparse else None,
            )
        )
    return rows


def format_table(rows: list[Row], n: int) -> str:
    head = (
        f"{'codec':<16} {'payload B':>11} {'vs fp32':>8} {'message B':>11} "
        f"{'enc MB/s':>9} {'dec MB/s':>9} {'sparse MB/s':>11}"
    )
    lines = [f"n = {n:,} float32 ({4 * n / 1e6:.1f} MB); throughput in MB/s of fp32 input", head]
    lines.append("-" * len(head))
    for r in rows:
        sparse = "-" if r.sparse is None else f"{r.sparse:.0f}"
        lines.append(
            f"{r.codec:<16} {r.payload:>11,} {r.ratio:>7.1f}x {r.message:>11,} "
            f"{r.encode:>9.0f} {r.decode:>9.0f} {sparse:>11}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vector length")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    args = parser.parse_args()
    print(format_table(bench(args.n, args.repeats), args.n))


if __name__ == "__main__":
    main()
