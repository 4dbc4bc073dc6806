#!/usr/bin/env python3
"""Where a benchmark round's time went on this host: the shared link and the CPUs, sampled.

    sample.py record OUT DEV [INTERVAL]    until SIGTERM, every INTERVAL s (default 0.5): the
                                           bytes DEV's tc classes sent, the host's CPU time
                                           (/proc/stat) and each process's (/proc/PID/stat) by
                                           command name, as JSON lines into OUT
    sample.py summary OUT T0 T1 MBIT       for the window [T0, T1] (unix times): the link's use
                                           (bytes sent / what MBIT Mbit/s carries), CPU busy,
                                           both per tenth of the window, and CPU seconds by
                                           command

A process that exits between two samples loses what it ran since the last one, so the table by
command is a lower bound; the host's busy figure is exact. Run in the network namespace whose
DEV carries the shared class (the origin's), as root.
"""
import json, os, re, signal, sys, time

TICK = os.sysconf("SC_CLK_TCK")


def link_bytes(dev):
    out = os.popen(f"tc -s class show dev {dev} 2>/dev/null").read()
    return sum(int(m) for m in re.findall(r"Sent (\d+) bytes", out))


def host_cpu():
    f = open("/proc/stat").readline().split()[1:]
    v = [int(x) for x in f]
    idle = v[3] + v[4]
    return sum(v[:8]) / TICK, (sum(v[:8]) - idle) / TICK


def procs():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            s = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        comm = s[s.index("(") + 1 : s.rindex(")")]
        rest = s[s.rindex(")") + 2 :].split()
        out[pid] = (comm, (int(rest[11]) + int(rest[12])) / TICK)
    return out


def record(path, dev, interval):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    last = {}
    with open(path, "a") as f:
        while not stop:
            now = time.time()
            total, busy = host_cpu()
            by = {}
            cur = procs()
            for pid, (comm, cpu) in cur.items():
                prev = last.get(pid)  # a pid seen before: its delta (kworkers rename themselves)
                d = cpu - prev[1] if prev else cpu
                comm = re.sub(r"^(kworker|ksoftirqd|migration|rcu_\w+)\b.*", r"\1", comm)
                if d > 0:
                    by[comm] = by.get(comm, 0) + d
            last = cur
            f.write(json.dumps({"t": now, "link": link_bytes(dev), "cpu": total, "busy": busy, "by": by}) + "\n")
            f.flush()
            time.sleep(interval)


def summary(path, t0, t1, mbit):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    rows = [r for r in rows if t0 - 1 <= r["t"] <= t1 + 1]
    if len(rows) < 3:
        print("(too few samples for this round)")
        return
    rate = mbit * 1e6 / 8
    first, last = rows[0], rows[-1]
    span = last["t"] - first["t"]
    sent = last["link"] - first["link"]
    cores = os.cpu_count()
    busy = (last["busy"] - first["busy"]) / (last["cpu"] - first["cpu"]) if last["cpu"] > first["cpu"] else 0
    print(f"link: {sent / 1e6:,.0f} MB sent in {span:.1f} s = {sent / span / 1e6:.1f} MB/s, "
          f"{sent / (rate * span):.0%} of {mbit} Mbit/s; CPU busy {busy:.0%} of {cores} cores")
    n = 10
    print(f"{'from s':>7} {'to s':>6} {'link MB/s':>10} {'link use':>9} {'CPU busy':>9}")
    for k in range(n):
        a, b = first["t"] + span * k / n, first["t"] + span * (k + 1) / n
        w = [r for r in rows if a <= r["t"] <= b]
        if len(w) < 2:
            continue
        dt = w[-1]["t"] - w[0]["t"]
        mb = (w[-1]["link"] - w[0]["link"]) / dt
        cb = (w[-1]["busy"] - w[0]["busy"]) / max(1e-9, w[-1]["cpu"] - w[0]["cpu"])
        print(f"{a - first['t']:>7.1f} {b - first['t']:>6.1f} {mb / 1e6:>10.1f} {mb / rate:>9.0%} {cb:>9.0%}")
    by = {}
    for r in rows[1:]:
        for comm, d in r["by"].items():
            by[comm] = by.get(comm, 0) + d
    host = last["busy"] - first["busy"]
    print(f"CPU seconds by command (host total {host:.1f} s over {cores} cores):")
    for comm, s in sorted(by.items(), key=lambda x: -x[1])[:10]:
        print(f"  {comm:<18} {s:>7.1f}  {s / host:>4.0%}")


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0.5)
    elif sys.argv[1] == "summary":
        summary(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(__doc__)
