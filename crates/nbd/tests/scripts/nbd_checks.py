#!/usr/bin/python3
# Provenance: the project's NBD probe script, kept here unchanged (see README.md here).
"""Targeted NBD server checks through libnbd (python3-libnbd).

Run with Debian's interpreter (/usr/bin/python3): a pyenv/venv python usually
cannot import the `nbd` module.

Usage:
  nbd_checks.py URI [REFERENCE_FILE] [--conns N] [--reads N]

URI is an NBD URI such as nbd://127.0.0.1:10809/name or nbd+unix:///name?socket=/path.
REFERENCE_FILE (optional) is the uncompressed image the export should equal;
when given, every read is compared with it byte for byte.

Prints one PASS/FAIL/INFO line per check; exit status 1 if any check failed.
The script only reads (it never writes to the export).
"""
import argparse
import errno
import os
import random
import sys

import nbd

results = []


def report(status, name, detail=""):
    results.append(status)
    print("%-4s %-34s %s" % (status, name, detail))


def errname(ex):
    """libnbd 1.14 puts the errno *name* (e.g. 'EINVAL') in nbd.Error.errno;
    other versions may put the number.  Normalise to the name."""
    e = ex.errno
    if isinstance(e, int):
        return errno.errorcode.get(e, str(e))
    return str(e)


def connect(uri, meta=True):
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("reference", nargs="?")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--reads", type=int, default=256)
    a = ap.parse_args()
    ref = open(a.reference, "rb") if a.reference else None

    def want(off, n):
        ref.seek(off)
        return ref.read(n)

    h = connect(a.uri)
    size = h.get_size()
    flags = []
    for name in ("read_only", "rotational"):
        if getattr(h, "is_" + name)():
            flags.append(name)
    for name in ("flush", "fua", "trim", "zero", "fast_zero", "df", "multi_conn", "cache"):
        if getattr(h, "can_" + name)():
            flags.append(name)
    report("INFO", "connection", "protocol=%s size=%d flags=%s" %
           (h.get_protocol(), size, ",".join(flags)))
    report("INFO", "block sizes", "min=%d preferred=%d max=%d" % (
        h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED),
        h.get_block_size(nbd.SIZE_MAXIMUM)))

    # 1. structured replies
    sr = h.get_structured_replies_negotiated()
    report("PASS" if sr else "INFO", "structured replies negotiated", str(sr))

    # 2. plain reads at random offsets (and the very last byte)
    rnd = random.Random(1234)
    bad = 0
    minbs = max(1, h.get_block_size(nbd.SIZE_MINIMUM))
    for _ in range(32):
        n = rnd.choice([512, 4096, 65536, 1 << 20])
        n = min(n, size)
        off = rnd.randrange(0, size - n + 1) // minbs * minbs
        buf = h.pread(n, off)
        if len(buf) != n or (ref and buf != want(off, n)):
            bad += 1
    tail = h.pread(minbs, size - minbs)
    if ref and tail != want(size - minbs, minbs):
        bad += 1
    report("FAIL" if bad else "PASS", "random reads" + (" vs reference" if ref else ""),
           "%d mismatches in 33 reads" % bad)

    # 3. don't-fragment read (single data chunk)
    if h.can_df():
        chunks = []

        def cb(subbuf, offset, status, err):
            chunks.append(status)
            return 0
        h.pread_structured(65536, 0, cb, nbd.CMD_FLAG_DF)
        ok = len(chunks) == 1 and chunks[0] == nbd.READ_DATA
        report("PASS" if ok else "FAIL", "read with CMD_FLAG_DF", "chunks=%r" % chunks)

    # 4. block status (base:allocation) over the whole export
    if h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
        extents = []
        off = 0
        calls = 0
        while off < size and calls < 100000:
            got = []

            def bs_cb(metacontext, offset, entries, err):
                if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                    got.extend(entries)
                return 0
            h.block_status(min(size - off, 1 << 31), off, bs_cb)
            calls += 1
            if not got:
                break
            adv = 0
            for i in range(0, len(got), 2):
                extents.append((off + adv, got[i], got[i + 1]))
                adv += got[i]
            off += adv
        covered = sum(e[1] for e in extents)
        holes = sum(e[1] for e in extents if e[2] & nbd.STATE_HOLE)
        zeros = sum(e[1] for e in extents if e[2] & nbd.STATE_ZERO)
        ok = covered >= size
        report("PASS" if ok else "FAIL", "block status base:allocation",
               "%d extents in %d requests, covered=%d hole=%d zero=%d" %
               (len(extents), calls, covered, holes, zeros))
        # every extent flagged ZERO must really read as zeroes
        if ref:
            badz = 0
            for (eoff, elen, eflags) in extents:
                if eflags & nbd.STATE_ZERO:
                    n = min(elen, 1 << 20, size - eoff)
                    if h.pread(n, eoff) != bytes(n):
                        badz += 1
            report("FAIL" if badz else "PASS", "ZERO extents read as zeroes",
                   "%d bad extents" % badz)
        # REQ_ONE must return exactly one extent
        one = []

        def one_cb(metacontext, offset, entries, err):
            one.append(len(entries) // 2)
            return 0
        h.block_status(size, 0, one_cb, nbd.CMD_FLAG_REQ_ONE)
        report("PASS" if one == [1] else "FAIL", "block status with REQ_ONE",
               "extents per context=%r" % one)
    else:
        report("INFO", "block status", "server offers no base:allocation")

    # 5. out-of-range requests: switch off libnbd's client-side checks so that
    #    the request really reaches the server, then expect an error reply.
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_BOUNDS & ~nbd.STRICT_ZERO_SIZE)
    for label, n, off in (("read straddling end", 4096, size - 2048),
                          ("read at end", 512, size),
                          ("read far past end", 512, 1 << 62)):
        try:
            h.pread(n, off)
            report("FAIL", label, "server returned data")
        except nbd.Error as ex:
            good = errname(ex) == "EINVAL"
            report("PASS" if good else "WARN", label,
                   "error %s (spec: SHOULD be EINVAL) %s" % (errname(ex), ex.string))
    # the connection must survive those errors
    try:
        h.pread(512, 0)
        report("PASS", "connection alive after errors")
    except nbd.Error as ex:
        report("FAIL", "connection alive after errors", str(ex))

    # 6. write to a read-only export must fail with EPERM (libnbd would refuse
    #    locally, so clear STRICT_COMMANDS to let the request through)
    if h.is_read_only():
        h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_COMMANDS)
        try:
            h.pwrite(bytes(512), 0)
            report("FAIL", "write on read-only export", "server accepted the write!")
        except nbd.Error as ex:
            name = errname(ex)
            report("PASS" if name == "EPERM" else "WARN", "write on read-only export",
                   "error %s (spec: SHOULD be EPERM)" % name)
    h.shutdown()

    # 7. several connections in parallel, many requests in flight on each
    handles = [connect(a.uri, meta=False) for _ in range(a.conns)]
    mc = handles[0].can_multi_conn()
    bufs = []
    for i, hh in enumerate(handles):
        for j in range(a.reads // a.conns):
            n = 4096
            off = rnd.randrange(0, size // 4096) * 4096
            buf = nbd.Buffer(n)
            cookie = hh.aio_pread(buf, off)
            bufs.append((hh, cookie, buf, off, n))
    pending = set(range(len(bufs)))
    while pending:
        for hh in handles:
            if hh.aio_in_flight() > 0:
                hh.poll(-1)
        for k in list(pending):
            hh, cookie, buf, off, n = bufs[k]
            if hh.aio_command_completed(cookie):
                pending.discard(k)
    bad = 0
    if ref:
        for hh, cookie, buf, off, n in bufs:
            if buf.to_bytearray() != want(off, n):
                bad += 1
    report("FAIL" if bad else "PASS", "%d connections x %d aio reads" % (a.conns, a.reads // a.conns),
           "multi-conn advertised=%s, %d mismatches" % (mc, bad))
    for hh in handles:
        hh.shutdown()

    return 1 if "FAIL" in results else 0


if __name__ == "__main__":
    sys.exit(main())
