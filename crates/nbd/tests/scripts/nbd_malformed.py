#!/usr/bin/env python3
# Provenance: the project's NBD probe script, kept here unchanged (see README.md here).
"""Probe an NBD server with well-formed and deliberately malformed traffic.

Standard library only (any python3 works).  Every probe opens its own TCP
connection, does something odd, and reports what the server did:

  closed          the server dropped the connection (hard disconnect)
  waiting         the server neither answered nor closed within the timeout
  reply ...       the server answered (option reply or transmission reply)

After every probe a fresh connection performs a normal 512-byte read; if that
fails the server has died or wedged, which is always a bug.

Usage:
  nbd_malformed.py HOST PORT [--export NAME] [--only NAME[,NAME...]] [--timeout S]

Exit status: 0 if the server stayed alive through every probe, 1 otherwise.
This only talks to the address you give it; point it at 127.0.0.1.
"""
import argparse
import errno
import os
import socket
import struct
import sys
import time

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668E33EF

OPT = dict(EXPORT_NAME=1, ABORT=2, LIST=3, STARTTLS=5, INFO=6, GO=7,
           STRUCTURED_REPLY=8, LIST_META_CONTEXT=9, SET_META_CONTEXT=10,
           EXTENDED_HEADERS=11)
REP_NAMES = {1: "ACK", 2: "SERVER", 3: "INFO", 4: "META_CONTEXT"}
for i, n in enumerate(["UNSUP", "POLICY", "INVALID", "PLATFORM", "TLS_REQD",
                       "UNKNOWN", "SHUTDOWN", "BLOCK_SIZE_REQD", "TOO_BIG",
                       "EXT_HEADER_REQD"], start=1):
    REP_NAMES[0x80000000 + i] = "ERR_" + n
CMD = dict(READ=0, WRITE=1, DISC=2, FLUSH=3, TRIM=4, CACHE=5,
           WRITE_ZEROES=6, BLOCK_STATUS=7)
CHUNK_NAMES = {0: "NONE", 1: "OFFSET_DATA", 2: "OFFSET_HOLE",
               5: "BLOCK_STATUS", 0x8001: "ERROR", 0x8002: "ERROR_OFFSET"}
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3


class Closed(Exception):
    pass


class Waiting(Exception):
    pass


def errname(e):
    return errno.errorcode.get(e, str(e))


class Conn:
    def __init__(self, host, port, timeout):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.size = None
        self.tflags = None
        self.structured = False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def abort_hard(self):
        """Close with RST instead of FIN (client vanishes)."""
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
        self.s.close()

    def send(self, data):
        try:
            self.s.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as ex:
            raise Closed(str(ex))

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.s.recv(n - len(buf))
            except socket.timeout:
                raise Waiting()
            except ConnectionResetError:
                raise Closed("reset")
            if not chunk:
                raise Closed("eof")
            buf += chunk
        return buf

    def state_after(self, wait=None):
        """Is the peer still there?  Returns 'closed', 'waiting' or 'data'."""
        self.s.settimeout(wait if wait is not None else self.timeout)
        try:
            b = self.s.recv(1, socket.MSG_PEEK)
            return "data" if b else "closed"
        except socket.timeout:
            return "waiting"
        except ConnectionResetError:
            return "closed"
        finally:
            self.s.settimeout(self.timeout)

    # ---- handshake -------------------------------------------------------
    def greeting(self):
        magic, opt, hflags = struct.unpack(">QQH", self.recv_exact(18))
        if magic != NBDMAGIC or opt != IHAVEOPT:
            raise RuntimeError("not a fixed-newstyle server: %x %x" % (magic, opt))
        return hflags

    def client_flags(self, flags=0x3):
        self.send(struct.pack(">I", flags))

    def send_opt(self, opt, data=b"", magic=IHAVEOPT, length=None):
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", magic, opt, length) + data)

    def read_opt_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        if magic != OPT_REPLY_MAGIC:
            raise RuntimeError("bad option reply magic %x" % magic)
        data = self.recv_exact(length) if length else b""
        return opt, rtype, data

    def read_opt_replies(self):
        """Collect replies until ACK or an error; return list of (type, data)."""
        out = []
        while True:
            _, rtype, data = self.read_opt_reply()
            out.append((rtype, data))
            if rtype == 1 or rtype & 0x80000000:
                return out

    def handshake(self, export="", structured=False, meta=None):
        self.greeting()
        self.client_flags(0x3)
        if structured:
            self.send_opt(OPT["STRUCTURED_REPLY"])
            _, rtype, _ = self.read_opt_reply()
            self.structured = rtype == 1
        if meta:
            name = export.encode()
            q = meta.encode()
            data = struct.pack(">I", len(name)) + name + struct.pack(">I", 1) \
                + struct.pack(">I", len(q)) + q
            self.send_opt(OPT["SET_META_CONTEXT"], data)
            self.read_opt_replies()
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self.send_opt(OPT["GO"], data)
        for rtype, d in self.read_opt_replies():
            if rtype == 3 and struct.unpack(">H", d[:2])[0] == INFO_EXPORT:
                self.size, self.tflags = struct.unpack(">QH", d[2:12])
            elif rtype & 0x80000000:
                raise RuntimeError("GO failed: %s %r" % (REP_NAMES.get(rtype, hex(rtype)), d))
        return self

    # ---- transmission ----------------------------------------------------
    def request(self, cmd, offset=0, length=0, flags=0, cookie=1, payload=b"",
                magic=REQ_MAGIC):
        self.send(struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length)
                  + payload)

    def read_reply(self, expect_len=0):
        """Read one reply (simple or one structured chunk); describe it."""
        magic = struct.unpack(">I", self.recv_exact(4))[0]
        if magic == SIMPLE_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recv_exact(12))
            if err == 0 and expect_len:
                self.recv_exact(expect_len)
            return "simple error=%s" % (errname(err) if err else "0")
        if magic == STRUCT_MAGIC:
            flags, ctype, cookie, length = struct.unpack(">HHQI", self.recv_exact(16))
            payload = self.recv_exact(length) if length else b""
            desc = "chunk %s%s" % (CHUNK_NAMES.get(ctype, hex(ctype)),
                                   " DONE" if flags & 1 else "")
            if ctype & 0x8000 and len(payload) >= 6:
                err, mlen = struct.unpack(">IH", payload[:6])
                msg = payload[6:6 + mlen].decode(errors="replace")
                desc += " error=%s msg=%r" % (errname(err), msg)
            return desc
        raise RuntimeError("unknown reply magic %#x" % magic)

    def read_full_reply(self, expect_len=0):
        parts = []
        while True:
            d = self.read_reply(expect_len)
            parts.append(d)
            if d.startswith("simple") or " DONE" in d:
                return "; ".join(parts)


# --------------------------------------------------------------------------
def outcome(fn):
    try:
        return fn()
    except Closed:
        return "closed"
    except Waiting:
        return "waiting (no reply within timeout)"


def probes(a):
    H, P, T, E = a.host, a.port, a.timeout, a.export

    def new():
        return Conn(H, P, T)

    def ready(structured=False, meta=None):
        return new().handshake(E, structured=structured, meta=meta)

    def p_bad_client_flags():
        c = new(); c.greeting(); c.client_flags(0x80000003)
        return "after unknown client flag bit 31: " + c.state_after()

    def p_bad_option_magic():
        c = new(); c.greeting(); c.client_flags()
        c.send_opt(OPT["LIST"], magic=0x1122334455667788)
        st = c.state_after()
        if st != "data":
            return st
        return outcome(lambda: "reply " + REP_NAMES.get(c.read_opt_reply()[1], "?"))

    def p_unknown_option():
        c = new(); c.greeting(); c.client_flags()
        c.send_opt(0x4242, b"junk")
        r = outcome(lambda: REP_NAMES.get(c.read_opt_reply()[1], "?"))
        # the session must still be usable afterwards
        c.send_opt(OPT["LIST"])
        after = outcome(lambda: ",".join(REP_NAMES.get(t, "?") for t, _ in c.read_opt_replies()))
        return "reply %s; following NBD_OPT_LIST -> %s" % (r, after)

    def p_list_with_data():
        c = new(); c.greeting(); c.client_flags()
        c.send_opt(OPT["LIST"], b"xx")
        return outcome(lambda: "reply " + ",".join(REP_NAMES.get(t, "?") for t, _ in c.read_opt_replies()))

    def p_huge_option_length():
        c = new(); c.greeting(); c.client_flags()
        c.send_opt(0x4242, b"", length=0x7FFFFFF0)  # promise 2 GiB, send nothing
        st = c.state_after(2)
        if st == "data":
            return "reply " + outcome(lambda: REP_NAMES.get(c.read_opt_reply()[1], "?"))
        return st

    def p_go_unknown_export():
        c = new(); c.greeting(); c.client_flags()
        name = b"no-such-export-xyz"
        c.send_opt(OPT["GO"], struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        return outcome(lambda: "reply " + ",".join(REP_NAMES.get(t, "?") for t, _ in c.read_opt_replies()))

    def p_go_bad_namelen():
        c = new(); c.greeting(); c.client_flags()
        # name length claims 1000 bytes but the option is only 10 bytes long
        c.send_opt(OPT["GO"], struct.pack(">I", 1000) + b"abcdef")
        return outcome(lambda: "reply " + ",".join(REP_NAMES.get(t, "?") for t, _ in c.read_opt_replies()))

    def p_export_name_unknown():
        c = new(); c.greeting(); c.client_flags()
        c.send_opt(OPT["EXPORT_NAME"], b"no-such-export-xyz")
        st = c.state_after(1)
        return "NBD_OPT_EXPORT_NAME(unknown): " + st

    def p_abort():
        c = new(); c.greeting(); c.client_flags()
        c.send_opt(OPT["ABORT"])
        r = outcome(lambda: REP_NAMES.get(c.read_opt_reply()[1], "?"))
        return "reply %s, then %s" % (r, c.state_after(1))

    def p_meta_without_sr():
        c = new(); c.greeting(); c.client_flags()
        q = b"base:allocation"
        c.send_opt(OPT["SET_META_CONTEXT"], struct.pack(">I", 0) + struct.pack(">I", 1)
                   + struct.pack(">I", len(q)) + q)
        return outcome(lambda: "reply " + ",".join(REP_NAMES.get(t, "?") for t, _ in c.read_opt_replies()))

    def p_extended_headers():
        c = new(); c.greeting(); c.client_flags()
        c.send_opt(OPT["EXTENDED_HEADERS"])
        return outcome(lambda: "reply " + REP_NAMES.get(c.read_opt_reply()[1], "?"))

    def p_starttls():
        c = new(); c.greeting(); c.client_flags()
        c.send_opt(OPT["STARTTLS"])
        return outcome(lambda: "reply " + REP_NAMES.get(c.read_opt_reply()[1], "?"))

    def p_midhandshake_vanish():
        c = new(); c.greeting(); c.abort_hard()
        return "client reset right after greeting"

    # transmission-phase probes
    def p_bad_request_magic():
        c = ready()
        c.request(CMD["READ"], 0, 512, magic=0xDEADBEEF)
        return c.state_after()

    def p_unknown_command():
        c = ready()
        c.request(0x55, 0, 512, cookie=7)
        r = outcome(lambda: c.read_full_reply())
        c.request(CMD["READ"], 0, 512, cookie=8)
        r2 = outcome(lambda: c.read_full_reply(512))
        return "%s; next READ -> %s" % (r, r2)

    def p_unknown_cmd_flag():
        c = ready()
        c.request(CMD["READ"], 0, 512, flags=0x8000, cookie=9)
        return outcome(lambda: c.read_full_reply(512))

    def p_read_past_end(structured):
        def f():
            c = ready(structured=structured)
            c.request(CMD["READ"], c.size - 512, 1024, cookie=10)
            r = outcome(lambda: c.read_full_reply(1024))
            c.request(CMD["READ"], c.size, 512, cookie=11)
            r2 = outcome(lambda: c.read_full_reply(512))
            c.request(CMD["READ"], 0, 512, cookie=12)
            r3 = outcome(lambda: c.read_full_reply(512))
            return "straddling end: %s | at end: %s | then valid READ: %s" % (r, r2, r3)
        return f

    def p_offset_overflow():
        c = ready()
        c.request(CMD["READ"], 0xFFFFFFFFFFFFFE00, 1024, cookie=13)
        return outcome(lambda: c.read_full_reply(1024))

    def p_huge_read():
        c = ready()
        c.request(CMD["READ"], 0, 0xFFFFFFFF, cookie=14)
        st = c.state_after(3)
        if st != "data":
            return st
        return outcome(lambda: c.read_reply(0))

    def p_zero_length_read():
        c = ready()
        c.request(CMD["READ"], 0, 0, cookie=15)
        return outcome(lambda: c.read_full_reply(0))

    def p_huge_write_header():
        c = ready()
        c.request(CMD["WRITE"], 0, 0x7FFFFFFF, cookie=16)  # promise 2 GiB, send none
        st = c.state_after(2)
        if st != "data":
            return st
        return outcome(lambda: c.read_reply(0))

    def p_write_read_only():
        c = ready()
        if not c.tflags & 2:
            return "skipped: export is writable (this probe never writes to writable exports)"
        c.request(CMD["WRITE"], 0, 512, cookie=17, payload=b"\0" * 512)
        return "WRITE on read-only export: " + outcome(lambda: c.read_full_reply())

    def p_block_status_no_ctx():
        c = ready(structured=True)
        c.request(CMD["BLOCK_STATUS"], 0, 4096, cookie=18)
        return outcome(lambda: c.read_full_reply())

    def p_block_status_ok():
        c = ready(structured=True, meta="base:allocation")
        c.request(CMD["BLOCK_STATUS"], 0, c.size, cookie=19)
        r = outcome(lambda: c.read_full_reply())
        c.request(CMD["BLOCK_STATUS"], c.size - 512, 4096, cookie=20)
        r2 = outcome(lambda: c.read_full_reply())
        return "whole export: %s | past end: %s" % (r, r2)

    def p_flush_nonzero():
        c = ready()
        c.request(CMD["FLUSH"], 4096, 4096, cookie=21)
        return outcome(lambda: c.read_full_reply())

    def p_vanish_mid_write():
        c = ready()
        c.request(CMD["WRITE"], 0, 1 << 20, cookie=22, payload=b"\0" * (100 << 10))
        c.abort_hard()
        return "sent WRITE header + 100 KiB of a 1 MiB payload, then RST"

    def p_vanish_with_replies_pending():
        c = ready()
        for i in range(64):
            c.request(CMD["READ"], 0, 1 << 20, cookie=100 + i)
        c.abort_hard()
        return "queued 64 x 1 MiB READs, closed without reading replies"

    def p_disc():
        c = ready()
        c.request(CMD["DISC"], cookie=23)
        return "after NBD_CMD_DISC: " + c.state_after(2)

    return [
        ("bad_client_flags", p_bad_client_flags),
        ("bad_option_magic", p_bad_option_magic),
        ("unknown_option", p_unknown_option),
        ("list_with_data", p_list_with_data),
        ("huge_option_length", p_huge_option_length),
        ("go_unknown_export", p_go_unknown_export),
        ("go_bad_namelen", p_go_bad_namelen),
        ("export_name_unknown", p_export_name_unknown),
        ("abort", p_abort),
        ("meta_without_structured", p_meta_without_sr),
        ("extended_headers", p_extended_headers),
        ("starttls_no_tls", p_starttls),
        ("vanish_mid_handshake", p_midhandshake_vanish),
        ("bad_request_magic", p_bad_request_magic),
        ("unknown_command", p_unknown_command),
        ("unknown_command_flag", p_unknown_cmd_flag),
        ("read_past_end_simple", p_read_past_end(False)),
        ("read_past_end_structured", p_read_past_end(True)),
        ("offset_overflow", p_offset_overflow),
        ("huge_read_length", p_huge_read),
        ("zero_length_read", p_zero_length_read),
        ("huge_write_header", p_huge_write_header),
        ("write_read_only", p_write_read_only),
        ("block_status_no_context", p_block_status_no_ctx),
        ("block_status", p_block_status_ok),
        ("flush_nonzero_fields", p_flush_nonzero),
        ("vanish_mid_write", p_vanish_mid_write),
        ("vanish_replies_pending", p_vanish_with_replies_pending),
        ("disc", p_disc),
    ]


def alive(a):
    try:
        c = Conn(a.host, a.port, a.timeout).handshake(a.export)
        c.request(CMD["READ"], 0, 512, cookie=999)
        r = c.read_full_reply(512)
        c.request(CMD["DISC"])
        c.close()
        return r == "simple error=0"
    except Exception as ex:  # noqa: BLE001 - any failure means "not alive"
        print("    liveness failure: %r" % ex)
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--export", default="")
    ap.add_argument("--only", default="")
    ap.add_argument("--timeout", type=float, default=3.0)
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    ok = True
    for name, fn in probes(a):
        if only and name not in only:
            continue
        try:
            res = fn()
        except (Closed, Waiting, RuntimeError, OSError) as ex:
            res = "%s: %s" % (type(ex).__name__, ex)
        time.sleep(0.2)
        live = alive(a)
        ok &= live
        print("%-26s %s  [server %s]" % (name, res, "alive" if live else "DEAD"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
