"""Diagnostics of the whole service: the gunicorn master and all its workers."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import psutil

from .clock import isoformat


@dataclass(frozen=True)
class ServerInfo:
    """How the service was started; gunicorn's post_worker_init fills it in from its config."""

    binds: tuple[str, ...] = ()
    workers: int = 1
    threads: int = 1
    worker_connections: int = 1000
    master_pid: int = field(default_factory=os.getpid)


def service_processes(info: ServerInfo) -> tuple[psutil.Process, list[psutil.Process]]:
    """The master and its workers (or just this process when not under gunicorn)."""
    try:
        master = psutil.Process(info.master_pid)
        workers = master.children() if info.master_pid != os.getpid() else []
    except psutil.NoSuchProcess:
        master, workers = psutil.Process(), []
    return master, workers


def _ports(binds: tuple[str, ...]) -> set[int]:
    ports = set()
    for bind in binds:
        host, _, port = bind.rpartition(":")
        if port.isdigit():
            ports.add(int(port))
    return ports


def connection_report(info: ServerInfo, connections_total: int, interfaces=None) -> dict:
    master, workers = service_processes(info)
    ports = _ports(info.binds)
    active = 0
    for proc in [master, *workers]:
        try:
            active += sum(
                1
                for c in proc.net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port in ports
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    listening = info.binds[0] if info.binds else ""
    return {
        "server": "running",
        "port": next(iter(sorted(ports)), None),
        "connections": {
            "active": active,
            "total": connections_total,
            "max": info.workers * info.worker_connections,
        },
        "network": {
            "interfaces": sorted(interfaces if interfaces is not None else psutil.net_if_addrs()),
            "listening_on": listening,
            "binds": list(info.binds),
        },
        "workers": len(workers) or 1,
        "timestamp": isoformat(),
    }


def _process_figures(proc: psutil.Process, cpu: float) -> dict:
    with proc.oneshot():
        memory = proc.memory_info()
        return {
            "pid": proc.pid,
            "cpu_percent": round(cpu, 1),
            "rss_mb": round(memory.rss / 2**20, 1),
            "vms_mb": round(memory.vms / 2**20, 1),
            "threads": proc.num_threads(),
            "open_files": proc.num_fds(),
        }


def performance_report(info: ServerInfo, response_times: dict, sample_s: float = 0.1) -> dict:
    master, workers = service_processes(info)
    processes = [master, *workers]
    for proc in processes:  # prime the CPU counters, then measure over one short interval
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.cpu_percent(None)
    time.sleep(sample_s)
    figures = []
    for proc in processes:
        try:
            figures.append(_process_figures(proc, proc.cpu_percent(None)))
        except psutil.NoSuchProcess:
            continue
    total_memory = psutil.virtual_memory().total
    rss = sum(f["rss_mb"] for f in figures)
    return {
        "cpu_percent": round(sum(f["cpu_percent"] for f in figures), 1),
        "memory": {
            "rss_mb": round(rss, 1),
            "vms_mb": round(sum(f["vms_mb"] for f in figures), 1),
            "percent": round(100 * rss * 2**20 / total_memory, 2),
        },
        "threads": sum(f["threads"] for f in figures),
        "open_files": sum(f["open_files"] for f in figures),
        "response_times": response_times,
        "processes": {
            "master": figures[0] if figures else None,
            "workers": figures[1:] if workers else [],
        },
        "timestamp": isoformat(),
    }
