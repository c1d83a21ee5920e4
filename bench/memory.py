"""Where an idle processor's memory goes: each process's share, and what a worker copies.

    python3 bench/memory.py [--admin-url ...] [--numthreads 5] [--idle 10]

Starts ``run-task-processor --tasks bench_tasks`` on a database of its own, runs one task, lets
it idle, and prints for each process its PSS and USS (private memory) and where the private
part lies: the interpreter's object arenas, the C heap (malloc), libpython's own data, the
rest. Then, read
from ``/proc/<pid>/pagemap`` (root only), how much of the workers' private memory is pages
copied from the supervisor (written after fork: reference counts, mostly) and how much is new,
and, for scale, what a bare interpreter's child owns right after ``fork()``.
"""

from __future__ import annotations

import argparse
import collections
import os
import struct
import subprocess
import sys
import tempfile
import time

import psutil
from run import Bench, wait_until

_PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT, _PFN_MASK = 1 << 63, (1 << 55) - 1
_MIB = 1024 * 1024


def private_by_mapping(pid: int) -> dict[str, int]:
    """Private bytes of ``pid`` by kind of mapping, from /proc/<pid>/smaps."""
    totals: collections.Counter[str] = collections.Counter()
    kind = "other"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:
                path = fields[5] if len(fields) > 5 else ""
                kind = (
                    "arenas"
                    if not path
                    else "malloc"
                    if path == "[heap]"
                    else "libpython"
                    if "libpython" in path
                    else "other"
                )
            elif fields[0] in ("Private_Dirty:", "Private_Clean:"):
                totals[kind] += int(fields[1]) * 1024
    return dict(totals)


def frames(pid: int) -> dict[int, int]:
    """Address -> physical frame of every present page in ``pid``'s writable mappings."""
    present = {}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split()
            if "w" not in fields[1]:
                continue
            low, high = (int(part, 16) for part in fields[0].split("-"))
            pagemap.seek(low // _PAGE * 8)
            entries = pagemap.read((high - low) // _PAGE * 8)
            for index in range(len(entries) // 8):
                (entry,) = struct.unpack_from("=Q", entries, index * 8)
                if entry & _PRESENT:
                    present[low + index * _PAGE] = entry & _PFN_MASK
    return present


def copied_and_new(supervisor: int, workers: list[int]) -> tuple[int, int] | None:
    """Bytes the workers own alone: pages at an address the supervisor has too (copied on
    write) and pages it has not (new). None where frames cannot be read (not root)."""
    try:
        parent = frames(supervisor)
        children = [frames(pid) for pid in workers]
    except PermissionError:
        return None
    if not any(parent.values()):
        return None  # frame numbers hidden: not root
    owners = collections.Counter(frame for child in children for frame in child.values())
    copied = new = 0
    for child in children:
        for address, frame in child.items():
            if owners[frame] == 1 and parent.get(address) != frame:
                if address in parent:
                    copied += _PAGE
                else:
                    new += _PAGE
    return copied, new


_BARE_FORK = """
import os
def private():
    with open("/proc/self/smaps_rollup") as rollup:
        return sum(int(line.split()[1]) for line in rollup if line.startswith("Private_"))
pid = os.fork()
if pid == 0:
    print(private() * 1024, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def copied_pages(supervisor: int, workers: list[int], worker: int) -> set[int]:
    """Addresses of the pages ``worker`` copied from ``supervisor`` (written after fork): its
    frame differs from the supervisor's and no other worker has it (a page the supervisor
    copied has a new frame there while the workers still share the original)."""
    parent = frames(supervisor)
    owners = collections.Counter(frame for pid in workers for frame in frames(pid).values())
    return {
        address
        for address, frame in frames(worker).items()
        if address in parent and parent[address] != frame and owners[frame] == 1
    }


def kinds_on_pages(census: str, pages: set[int]) -> tuple[collections.Counter[str], int]:
    """For each kind of object in the census, how many of ``pages`` hold at least one; and
    how many of the pages hold any object the census knows."""
    kinds_by_page: dict[int, set[str]] = collections.defaultdict(set)
    with open(census) as lines:
        for line in lines:
            address, size, label = line.rstrip("\n").split(" ", 2)
            start = int(address)
            for page in range(start // _PAGE * _PAGE, start + max(1, int(size)), _PAGE):
                if page in pages:
                    kinds_by_page[page].add(label)
    counts: collections.Counter[str] = collections.Counter()
    for kinds in kinds_by_page.values():
        counts.update(kinds)
    return counts, len(kinds_by_page)


def print_objects(census: str, supervisor: int, workers: list[int], most: int) -> None:
    """Which objects lie on the pages one worker copied."""
    worker = workers[-1]
    pages = copied_pages(supervisor, workers, worker)
    counts, known = kinds_on_pages(census, pages)
    print(
        f"worker {worker}: {len(pages)} pages copied, {known} of them hold objects the "
        f"supervisor had before its last fork; pages holding each kind (a page may hold several):"
    )
    for label, count in counts.most_common(most):
        print(f"  {count:5} {label}")


def bare_fork_private() -> int:
    """Private bytes of a bare interpreter's child at its first line after ``fork()``."""
    run = subprocess.run([sys.executable, "-c", _BARE_FORK], capture_output=True, text=True)
    return int(run.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle before measuring")
    parser.add_argument(
        "--objects",
        type=int,
        default=0,
        metavar="N",
        help="name the N kinds of object found most on a worker's copied pages (root only; "
        "the census taken before each fork moves the other figures a little)",
    )
    arguments = parser.parse_args()
    bench = Bench(arguments.admin_url)
    census = os.path.join(tempfile.mkdtemp(prefix="tp-census-"), "census")
    try:
        if arguments.objects:
            os.environ["TP_FORK_CENSUS"] = census
        bench.start_processor(preload="fork_census" if arguments.objects else None)
        bench.tasks.noop.delay()  # one task first, as the peer benchmark's idle measure does
        wait_until(lambda: bench.count("succeeded") == 1, 30)
        time.sleep(arguments.idle)
        supervisor = psutil.Process(bench.processor.pid)
        workers = [child.pid for child in supervisor.children()]
        total = 0
        for pid in [supervisor.pid, *workers]:
            memory = psutil.Process(pid).memory_full_info()
            total += memory.pss
            where = ", ".join(
                f"{kind} {size / _MIB:.2f}"
                for kind, size in sorted(private_by_mapping(pid).items(), key=lambda kv: -kv[1])
            )
            role = "supervisor" if pid == supervisor.pid else "worker    "
            print(
                f"{role} {pid:>7}: PSS {memory.pss / _MIB:5.1f} MiB, "
                f"private {memory.uss / _MIB:4.1f} MiB ({where})"
            )
        print(f"whole tree: PSS {total / _MIB:.1f} MiB")
        split = copied_and_new(supervisor.pid, workers)
        if split is not None:
            copied, new = split
            print(
                f"workers' private pages: {copied / _MIB / len(workers):.2f} MiB each copied "
                f"from the supervisor, {new / _MIB / len(workers):.2f} MiB each new"
            )
        print(f"a bare interpreter's child right after fork: {bare_fork_private() / _MIB:.2f} MiB")
        if arguments.objects:
            print_objects(census, supervisor.pid, workers, arguments.objects)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
