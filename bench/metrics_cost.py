"""What --metrics-bind costs the drain rate: A/B runs, alternated, medians printed.

    python3 bench/metrics_cost.py [--rounds 6] [--drain 20000]

Each round starts a processor (5 workers, bench_tasks) without and then with
``--metrics-bind 127.0.0.1:0`` (the order alternates between rounds), bulk-enqueues
``--drain`` no-op tasks into it once it is idle, and times the drain from the commit (as
bench/run.py's "drain, running"). With metrics, it scrapes at the end and checks that every
task was counted. The machine may be shared: compare the medians, not single runs.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from run import BENCH, REPO, Bench, processor_command, scalar, wait_until

_LISTENING = re.compile(rb"metrics on http://([^ ]+)/metrics")


class MetricsBench(Bench):
    log_path = ""

    def start_with(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO)])}
        descriptor, self.log_path = tempfile.mkstemp(prefix="tp-bench-", suffix=".log")
        with os.fdopen(descriptor, "wb") as log:
            self.processor = subprocess.Popen(
                processor_command(*args),
                cwd=REPO,
                env=env,
                stderr=log,
                start_new_session=True,
            )
        wait_until(
            lambda: (
                scalar(self.db, "SELECT count(*) FROM task_processor.workers WHERE state = 'idle'")
                == 5
            ),
            60,
        )

    def counted(self) -> float:
        with open(self.log_path, "rb") as log:
            found = _LISTENING.search(log.read())
        assert found, "the processor did not say where its metrics are"
        with urllib.request.urlopen(f"http://{found.group(1).decode()}/metrics") as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "task_processor_finished_tasks_total"
            and sample.labels["task_identifier"] == "bench_tasks.noop"
        )

    def stop(self) -> None:
        if self.processor is not None:
            self.processor.send_signal(signal.SIGTERM)
            self.processor.wait(60)
            self.processor = None
        os.unlink(self.log_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--drain", type=int, default=20_000)
    arguments = parser.parse_args()
    bench = MetricsBench(arguments.admin_url)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for round_ in range(arguments.rounds):
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for mode in order:
                bench.clear()
                bench.start_with(*(["--metrics-bind", "127.0.0.1:0"] if mode == "on" else []))
                rate = bench.drain_rate_running(arguments.drain)
                if mode == "on":
                    wait_until(lambda: bench.counted() >= arguments.drain, 10, 0.1)
                bench.stop()
                rates[mode].append(rate)
                print(f"round {round_ + 1} metrics {mode:3}: {rate:8.0f} tasks/s", flush=True)
                time.sleep(1)
    finally:
        bench.close()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"median without metrics: {off:8.0f} tasks/s")
    print(f"median with metrics:    {on:8.0f} tasks/s ({(on - off) / off:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
