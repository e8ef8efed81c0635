#!/usr/bin/env python
"""Probe: what a suboverflowed writer costs a concurrent reader (PostgreSQL only).

Usage: ``PROBE_DSN=postgresql://outbox:outbox@127.0.0.1:5432/DB python
bench/subtransactions_probe.py`` (creates and drops a table ``opt_probe``).

writer: transactions of 200 UPDATEs of random rows of a 10k-row table, each in a
savepoint, committed every CAP savepoints (64: never overflowed; 200: overflowed
after 64); reader: SELECT sum(v) over the table, in a loop. Each config 15 s.
"""

import multiprocessing as mp
import os
import random
import time

import psycopg

DSN = os.environ.get("PROBE_DSN", "postgresql://outbox:outbox@127.0.0.1:5432/outbox_probe")
SECONDS = 15


def setup():
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS opt_probe")
        c.execute("CREATE TABLE opt_probe (id int primary key, v int)")
        c.execute("INSERT INTO opt_probe SELECT g, 0 FROM generate_series(1, 10000) g")
        c.execute("VACUUM ANALYZE opt_probe")


def writer(cap, out, stop):
    n = 0
    with psycopg.connect(DSN) as c:
        cur = c.cursor()
        while not stop.is_set():
            for _ in range(cap):
                row = random.randint(1, 10000)
                cur.execute(f"SAVEPOINT s; UPDATE opt_probe SET v = v + 1 WHERE id = {row}")
                n += 1
            c.commit()
    out.put(("writer", n))


def reader(out, stop):
    n = 0
    with psycopg.connect(DSN, autocommit=True) as c:
        while not stop.is_set():
            c.execute("SELECT sum(v) FROM opt_probe").fetchone()
            n += 1
    out.put(("reader", n))


def run(cap):
    out, stop = mp.Queue(), mp.Event()
    procs = [mp.Process(target=reader, args=(out, stop))]
    if cap:
        procs.append(mp.Process(target=writer, args=(cap, out, stop)))
    for p in procs:
        p.start()
    time.sleep(SECONDS)
    stop.set()
    got = dict(out.get() for _ in procs)
    for p in procs:
        p.join()
    return {k: v / SECONDS for k, v in got.items()}


if __name__ == "__main__":
    setup()
    for rnd in range(2):
        order = [0, 64, 200] if rnd == 0 else [200, 64, 0]
        for cap in order:
            r = run(cap)
            print(
                f"round {rnd + 1} cap {cap or 'no writer'}: reader {r['reader']:.0f} q/s"
                + (f", writer {r['writer']:.0f} savepoints/s" if cap else ""),
                flush=True,
            )
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute("DROP TABLE opt_probe")
