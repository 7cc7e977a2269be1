"""How long a killed homus command's worker processes outlive it.

Starts ``homus ARGS`` in a subprocess, waits until it has at least ``--children`` child
processes (worker pools, resource trackers), sends the signal, and reports when the command
and every child recorded before the kill were gone (read from /proc; zombies count as gone).

    python benchmarks/kill_bench.py SIGKILL render --raw-dir raw --rendered-dir /tmp/r --size 32 --jobs 2
    python benchmarks/kill_bench.py SIGTERM train --from-strokes --raw-dir raw --writers 1-5 --size 32 \\
        --workers 2 --runs-dir /tmp/runs --name k --device cpu
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from homus_render.workers import descendants, process_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("signal", choices=["SIGTERM", "SIGKILL", "SIGINT"])
    ap.add_argument("--children", type=int, default=2, help="Kill once the command has this many children.")
    ap.add_argument("--settle", type=float, default=1.5, help="Seconds to let it work before the kill.")
    ap.add_argument("--wait", type=float, default=60, help="Seconds to watch for surviving workers.")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="The homus command and its flags.")
    a = ap.parse_args()
    log = open(os.devnull, "w")
    proc = subprocess.Popen([sys.executable, "-m", "homus.cli", *a.args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log)
    seen: set[int] = set()
    while len(seen) < a.children:
        if proc.poll() is not None:
            sys.exit(f"the command ended (code {proc.returncode}) before it had {a.children} children")
        seen |= descendants(proc.pid)
        time.sleep(0.1)
    time.sleep(a.settle)
    seen |= descendants(proc.pid)
    proc.send_signal(getattr(signal, a.signal))
    t0 = time.monotonic()
    proc.wait()
    parent = time.monotonic() - t0
    while seen & process_table().keys() and time.monotonic() - t0 < a.wait:
        time.sleep(0.1)
    left = seen & process_table().keys()
    print(f"{a.signal}: exit code {proc.returncode}; command gone after {parent:.1f} s; "
          + (f"{len(left)} of {len(seen)} children still running after {a.wait:.0f} s: {sorted(left)}" if left
             else f"all {len(seen)} children gone after {time.monotonic() - t0:.1f} s"))


if __name__ == "__main__":
    main()
