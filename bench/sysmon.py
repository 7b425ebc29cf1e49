"""Processes and /proc readings for the benchmark: start and stop by PID, CPU and RSS of a process tree.

CPU is utime+stime (all threads) summed over a process and its descendants, read from
/proc/PID/stat before and after a phase. RSS is VmRSS summed over the tree, sampled by a
thread every 100 ms, peak per phase. "Other load" is the CPU the rest of the machine used
during a phase: /proc/stat busy time minus everything this run accounts for.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from typing import IO

CLK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def _ppid_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int | None) -> list[int]:
    """The PID and all its descendants."""
    if pid is None:
        return []
    kids = _ppid_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_s(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK


def rss_mb(pids: list[int]) -> float:
    kb = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return kb / 1024.0


def fd_count(pids: list[int]) -> int:
    n = 0
    for p in pids:
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return n


def fd_limit(pid: int) -> int | None:
    """Soft RLIMIT_NOFILE of a running process."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK


def own_cpu_s() -> float:
    """This process plus its reaped children (wrk, loadgen runs)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def raise_fd_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Proc:
    """A child process in its own session, output to a log file, stopped by PID (and its tree)."""

    def __init__(self, name: str, argv: list[str], log_path: str, cpus: str | None = None,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.name = name
        self.log_path = log_path
        if cpus:
            argv = ["taskset", "-c", cpus] + argv
        self.argv = argv
        self.log: IO[bytes] = open(log_path, "wb")
        e = dict(os.environ)
        e.update(env or {})
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=e, cwd=cwd, start_new_session=True)
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def pids(self) -> list[int]:
        return tree(self.pid) if self.alive() else []

    def stop(self, grace: float = 8.0) -> None:
        if self.p.poll() is None:
            family = tree(self.pid)
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait(5)
            for pid in family[1:]:  # descendants left behind, by PID
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()

    def tail(self, n: int = 12) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 8192))
                lines = f.read().splitlines()[-n:]
        except OSError:
            return ""
        return "\n".join(x.decode("utf-8", "replace") for x in lines)


class Sampler(threading.Thread):
    """Peak RSS (and optionally fd count) of a few process trees, sampled in the background."""

    def __init__(self, roots: dict[str, int], every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.every = every
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.count_fds = False
        self.peak_rss: dict[str, float] = {}
        self.peak_fds: dict[str, int] = {}
        self._pids: dict[str, list[int]] = {}
        self._tree_at = 0.0

    def pids(self, key: str) -> list[int]:
        return self._pids.get(key) or tree(self.roots[key])

    def run(self) -> None:
        n = 0
        while not self.stop_ev.is_set():
            if time.monotonic() - self._tree_at > 1.0:  # the tree rarely changes: refresh once a second
                self._pids = {k: tree(pid) for k, pid in self.roots.items()}
                self._tree_at = time.monotonic()
            with self.lock:
                for k, pids in self._pids.items():
                    self.peak_rss[k] = max(self.peak_rss.get(k, 0.0), rss_mb(pids))
                if self.count_fds and n % 10 == 0:
                    for k, pids in self._pids.items():
                        self.peak_fds[k] = max(self.peak_fds.get(k, 0), fd_count(pids))
            n += 1
            self.stop_ev.wait(self.every)

    def reset(self, count_fds: bool = False) -> None:
        with self.lock:
            self.peak_rss = {k: rss_mb(tree(pid)) for k, pid in self.roots.items()}
            self.peak_fds = {}
            self.count_fds = count_fds

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        with self.lock:
            return dict(self.peak_rss), dict(self.peak_fds)

    def stop(self) -> None:
        self.stop_ev.set()
        self.join(2)
