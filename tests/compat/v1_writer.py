"""A legacy PULSE v1 training script: it only knows how to write training_status.json.

It imports nothing from PULSE and writes the file the way old scripts did:
**not atomically** -- truncate, write the first half, pause, write the rest --
so a poller can read an empty or half-written file. Between runs it also
leaves invalid JSON in the file for a while.

Usage: ``python v1_writer.py PATH HOLD TORN_PAUSE``. It plays four runs:

1. ``preparing`` then ``running`` epochs 1-3 then ``completed`` (ISO ``Z`` timestamps);
2. ``running`` epochs 1-2 then ``failed`` (timestamps as numbers of seconds);
3. ``training`` epochs 1-3 with no end (naive local ISO timestamps), then
4. epoch back to 1 and on to ``done`` (timestamps as milliseconds).

Each snapshot stays in the file for HOLD seconds. It prints ``T0 <seconds>``,
the timestamp of the first snapshot, and ``END`` when it is done.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime


def write_torn(path: str, obj: dict[str, object], pause: float) -> None:
    data = json.dumps(obj)
    half = len(data) // 2
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(data[:half])
        handle.flush()
        os.fsync(handle.fileno())
        time.sleep(pause)
        handle.write(data[half:])


def main() -> None:
    path, hold, pause = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    t0 = float(int(time.time()) - 100)  # whole seconds, in the recent past
    print(f"T0 {t0}", flush=True)
    clock = [t0]

    def snap(
        status: str, epoch: int, total: int, loss: float | None, message: str, ts: object
    ) -> None:
        write_torn(
            path,
            {
                "status": status,
                "epoch": epoch,
                "total_epochs": total,
                "loss": loss,
                "message": message,
                "timestamp": ts,
            },
            pause,
        )
        time.sleep(hold)

    def tick(seconds: float = 1.0) -> float:
        clock[0] += seconds
        return clock[0]

    def iso_z(at: float) -> str:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    # run 1: ISO with Z
    snap("preparing", 0, 3, None, "loading data", iso_z(clock[0]))
    for epoch, loss in ((1, 0.9), (2, 0.6), (3, 0.3)):
        snap("running", epoch, 3, loss, f"epoch {epoch}", iso_z(tick()))
    snap("completed", 3, 3, 0.25, "finished", iso_z(tick()))
    snap("completed", 3, 3, 0.25, "finished", iso_z(tick()))  # the same end, refreshed

    with open(path, "w", encoding="utf-8") as handle:  # garbage between runs
        handle.write("{not json at all")
    time.sleep(hold)

    # run 2: numbers of seconds
    for epoch, loss in ((1, 1.1), (2, 0.8)):
        snap("running", epoch, 2, loss, f"epoch {epoch}", tick(10.0))
    snap("failed", 2, 2, 0.8, "CUDA out of memory", tick())

    with open(path, "w", encoding="utf-8") as handle:  # an empty file
        handle.write("")
    time.sleep(hold)

    # run 3: naive local ISO, never ends
    for epoch, loss in ((1, 2.0), (2, 1.5), (3, 1.2)):
        snap(
            "training",
            epoch,
            5,
            loss,
            f"epoch {epoch}",
            datetime.fromtimestamp(tick(10.0)).isoformat(),
        )

    # run 4: epoch back to 1, milliseconds
    for epoch, loss in ((1, 0.7), (2, 0.4)):
        snap("running", epoch, 2, loss, f"epoch {epoch}", int(tick(10.0) * 1000))
    snap("done", 2, 2, 0.35, "saved", int(tick() * 1000))
    print("END", flush=True)


if __name__ == "__main__":
    main()
