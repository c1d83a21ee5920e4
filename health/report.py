"""The verdict of ``check-health``: which processors and workers are unhealthy, and why.

The freshness tests themselves run in SQL on the database clock (:mod:`health.queries`);
this module turns their results into one line a person can act on, and into the full state
for ``--json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from health.queries import ProcessorRow, WorkerRow


@dataclass
class Report:
    """The health of the checked processors; ``problems`` is empty exactly when healthy."""

    scope: str
    processors: list[ProcessorRow] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: the first problem (with a count of the others), or what is healthy."""
        if self.problems:
            more = len(self.problems) - 1
            plural = "s" if more > 1 else ""
            suffix = f" (and {more} more problem{plural}; --json shows all)" if more else ""
            return f"unhealthy: {self.problems[0]}{suffix}"
        described = ", ".join(
            f"processor {p.id} (pid {p.pid} on {p.host}, {p.num_workers} workers, "
            f"heartbeat {p.beat_age_seconds:.1f} s ago)"
            for p in self.processors
        )
        return f"healthy: {described}"

    def as_json(self) -> dict[str, Any]:
        workers_by_processor: dict[str, list[dict[str, Any]]] = {}
        for worker in self.workers:
            workers_by_processor.setdefault(worker.processor_id, []).append(
                _plain(dataclasses.asdict(worker))
            )
        return {
            "healthy": self.healthy,
            "summary": self.summary(),
            "scope": self.scope,
            "problems": self.problems,
            "processors": [
                {**_plain(dataclasses.asdict(p)), "workers": workers_by_processor.get(p.id, [])}
                for p in self.processors
            ],
        }


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _timestamp(value) if isinstance(value, datetime) else value
        for key, value in values.items()
    }


def _timestamp(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds") if moment else "?"


def _seconds(milliseconds: int) -> str:
    return f"{milliseconds / 1000:g} s"


def processor_problem(processor: ProcessorRow) -> str | None:
    """Why the supervisor itself is unhealthy, or None."""
    name = f"processor {processor.id} (pid {processor.pid} on {processor.host})"
    if processor.state == "stopped":
        return f"{name} stopped at {_timestamp(processor.stopped_at)}"
    if not processor.beat_fresh:
        return (
            f"{name}: supervisor heartbeat last written at "
            f"{_timestamp(processor.last_beat_at)}, {processor.beat_age_seconds:.1f} s ago, "
            f"longer than the grace period of {_seconds(processor.grace_period_ms)}: "
            f"the supervisor is frozen or dead"
        )
    if processor.state == "draining":
        return f"{name} is draining: it finishes its running tasks and claims no new ones"
    return None


def worker_problem(worker: WorkerRow, processor: ProcessorRow) -> str | None:
    """Why a worker slot is unhealthy, or None."""
    if worker.healthy:
        return None
    grace = _seconds(processor.grace_period_ms)
    if worker.state is None:
        return (
            f"worker {worker.slot} of processor {processor.id} has not reported since the "
            f"processor started at {_timestamp(processor.started_at)}, longer ago than the "
            f"grace period of {grace}"
        )
    name = (
        f"worker {worker.slot} (pid {worker.pid}, generation {worker.generation}) of "
        f"processor {processor.id}"
    )
    if worker.state == "busy" and worker.task_deadline is not None:
        return (
            f"{name}: busy since {_timestamp(worker.last_beat_at)} on task {worker.task_id} "
            f"({worker.task_identifier or 'unknown task'}), "
            f"{worker.past_deadline_seconds:.1f} s past its deadline "
            f"{_timestamp(worker.task_deadline)} and not replaced within the grace period of "
            f"{grace}"
        )
    return (
        f"{name}: {worker.state} since {_timestamp(worker.last_beat_at)}, no heartbeat for "
        f"{worker.beat_age_seconds:.1f} s, longer than the grace period of {grace}"
    )


def judge(scope: str, processors: list[ProcessorRow], workers: list[WorkerRow]) -> Report:
    """The report for ``processors`` (already selected by the caller) and their workers."""
    report = Report(scope, processors, workers)
    for processor in processors:
        problem = processor_problem(processor)
        if problem:  # its workers' state follows from it: one problem per processor suffices
            report.problems.append(problem)
            continue
        report.problems.extend(
            problem
            for problem in (
                worker_problem(worker, processor)
                for worker in workers
                if worker.processor_id == processor.id
            )
            if problem
        )
    return report


def nothing_to_check(scope: str, reason: str) -> Report:
    """A report for a scope with no processor to judge: always unhealthy."""
    return Report(scope, problems=[reason])
