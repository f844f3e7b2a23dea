"""The HDF5 side of a trace writer: steps in, crash-safe rows out.

:class:`Sink` owns an open trace file once its header is written. It creates the per-step
datasets from a *spec* (a JSON-able dict made by :class:`~noisesim.trace.TraceWriter` at the
first step) and commits one step at a time: checksum, optional deflate, one row per dataset,
then ``complete_steps``, then a flush — so a file cut off at any point holds whole steps only.

It runs either inside the training process (``TraceWriter(..., background=False)``) or as a
separate process fed through a pipe (the default), started as a plain script so it imports
numpy and h5py only::

    python _sink.py FILE            # frames on stdin, replies on stdout

Frames are ``kind (1 byte) | length (uint64 LE) | payload``:

* ``L`` the spec (JSON) — creates the datasets;
* ``S`` one step: the row of every dataset the spec marks ``frame``, back to back in spec
  order, each in its ``frame_dtype`` (their sizes follow from the spec);
* ``F`` flush request: every earlier step is in the file; reply ``F`` + complete steps (uint64);
* ``C`` close: trim the datasets to the complete steps, close the file, reply ``C`` + count.

At end of input without ``C`` (the training process died) the sink closes the file as it
stands: its whole steps, ``closed=0``, ``status="interrupted"``, no final state.

Running out of room never costs a step already written: before each step the sink reserves
(``posix_fallocate``) the bytes the step and its metadata need, so a full disk or a file size
limit (``RLIMIT_FSIZE``; ``SIGXFSZ`` is ignored) is met before anything of that step reaches
HDF5. The file is then closed as it stands, marked ``status="failed"`` with the cause in its
``error`` attribute, the cause is printed to stderr and the process exits with status 1. Any
other write error ends the process at once, without touching the file again: the file holds
the steps of its last flush (the file is open in SWMR mode while steps are written, so HDF5
orders its metadata writes to keep the flushed state readable).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # run as a script: this folder must not shadow other modules
    sys.path.pop(0)

import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from h5py import h5a, h5f, h5s, h5t  # noqa: E402

# HDF5 1.10 file format: checksummed superblock, object headers and chunk indices (extensible
# and fixed arrays, v2 B-trees) — damaged metadata fails its checksum instead of being followed.
# While steps are written the file is in SWMR-write mode: a writer killed then leaves a file
# that readers open with ``swmr=True`` (see reader.open_h5).
LIBVER = ("v110", "v110")
FRAME = struct.Struct("<cQ")      # kind, payload length
REPLY = struct.Struct("<cQ")      # kind, complete steps
PIPE_AHEAD_BYTES = 1 << 19        # this much waiting in the (1 MiB) pipe: the writer is behind
RESERVE_MARGIN = 1 << 16          # bytes kept reserved beyond a step for HDF5's metadata …
RESERVE_PER_DATASET = 1 << 10     # … plus this much per dataset (chunk-index blocks)
RESERVE_AHEAD = 1 << 22           # reserve this far ahead when the disk allows (fewer calls)


class OutOfSpace(OSError):
    """The bytes a step needs could not be reserved; nothing of that step was written."""

    def __str__(self) -> str:
        return str(self.strerror)


def describe(exc: BaseException) -> str:
    """An OS error in words: "No space left on device (ENOSPC)" — also for HDF5's messages,
    which carry the errno inside their text."""
    import re

    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        m = re.search(r"errno = (\d+)", str(exc))
        code = int(m.group(1)) if m else None
    if not code:
        return f"{type(exc).__name__}: {exc}"
    name = errno.errorcode.get(code)
    return f"{os.strerror(code)}{f' ({name})' if name else ''}"


def reserve(fd: int, end: int) -> None:
    """Make the file behind ``fd`` hold allocated blocks up to ``end`` (raises ``OSError``:
    ENOSPC on a full disk, EFBIG beyond ``RLIMIT_FSIZE``)."""
    size = os.fstat(fd).st_size
    if end > size:
        try:
            os.posix_fallocate(fd, size, end - size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.pwrite(fd, b"\0", end - 1)      # no fallocate here: at least claim the size


def row_sizes(spec) -> list[tuple[str, int, str]]:
    """``(name, elements, frame dtype)`` of each row a step frame carries, in frame order."""
    out = []
    for d in spec["datasets"]:
        if d.get("frame", True):
            n = 1
            for k in d["shape"]:
                n *= k
            out.append((d["name"], n, d.get("frame_dtype", d["dtype"])))
    return out


class Sink:
    """Commit steps into the open trace file ``f`` (see the module docstring)."""

    # Byte planes whose deflate output is larger than this fraction of their size are stored
    # (deflate "stored" blocks) instead: the low mantissa bytes of noise-like floats do not
    # compress, and deflating them costs most of the time. Re-decided every ``retry_steps``.
    PLANE_RATIO = 0.95

    def __init__(self, f: h5py.File):
        self._f = f
        self._fid = f.id
        self._cs_attr = h5a.open(self._fid, b"complete_steps")
        self._cs_buf = np.zeros((), np.int64)
        self.n = int(f.attrs["complete_steps"])
        self._cap = 0
        self._sets = None
        self.path = f.filename
        self._fd = os.open(self.path, os.O_WRONLY)   # for reserving space only (never written through)
        self._reserved = 0
        self._step_bytes = 0
        self.error = None        # why steps stopped (OutOfSpace), once they have

    def _reserve(self) -> None:
        """Reserve the room the next step needs — its rows, the metadata a flush may write
        and, when growing the datasets, their index blocks — or raise :class:`OutOfSpace`."""
        eoa = int(self._fid.get_filesize())
        margin = RESERVE_MARGIN + RESERVE_PER_DATASET * len(self._sets or ())
        need = eoa + self._step_bytes + margin
        if need <= self._reserved:
            return
        try:
            try:
                reserve(self._fd, max(need, eoa + 8 * self._step_bytes + margin + RESERVE_AHEAD))
            except OSError:
                reserve(self._fd, need)
        except OSError as exc:
            raise OutOfSpace(exc.errno, f"{describe(exc)}: cannot reserve the {need - eoa} bytes step "
                             f"{self.n + 1} needs; the file keeps its first {self.n} steps")
        self._reserved = os.fstat(self._fd).st_size

    # -- datasets ---------------------------------------------------------------------------------
    def create(self, spec: dict) -> None:
        """Create the per-step datasets and store the root attributes, as ``spec`` describes them."""
        self._sets, self._specs = [], []
        for d in spec["datasets"]:
            shape = tuple(d["shape"])
            rows = int(d.get("chunk_rows", 1))
            opts = {}
            if d.get("compression"):
                opts = dict(compression=d["compression"], compression_opts=d.get("compression_opts"), shuffle=True)
            if d.get("fillvalue") is not None:
                opts["fillvalue"] = d["fillvalue"]
            if d["name"] in self._f:      # a continued trace: its datasets hold the first n steps
                ds = self._f[d["name"]]
                if ds.shape != (self.n,) + shape or ds.dtype != np.dtype(d["dtype"]) or ds.chunks[0] != rows:
                    raise ValueError(f"{d['name']} has shape {ds.shape} and dtype {ds.dtype}; continuing after "
                                     f"step {self.n} needs {(self.n,) + shape} and {d['dtype']}")
            else:
                ds = self._f.create_dataset(d["name"], (0,) + shape, maxshape=(None,) + shape,
                                            chunks=(rows,) + tuple(max(k, 1) for k in shape), dtype=d["dtype"],
                                            **opts)
            for k, v in (d.get("attrs") or {}).items():
                ds.attrs[k] = v
            self._sets.append(ds)
            self._specs.append(d)
        for k, v in spec["attrs"].items():
            self._f.attrs[k] = v
        self._step_bytes = sum(int(np.prod(d.chunks)) * d.dtype.itemsize for d in self._sets)
        self._reserving = bool(spec.get("reserve", True))
        # hand-built gzip chunks of the compressed one-step-per-chunk datasets (see _deflate)
        self._deflate_rows = bool(spec.get("deflate"))
        self._level = int(spec.get("level", 4))
        self._retry = int(spec.get("retry_steps", 64))
        self.backlog_steps = int(spec.get("backlog_steps", 1))
        self._plane_state = [[0, None] for _ in self._sets]
        self._frame = [i for i, d in enumerate(self._specs) if d.get("frame", True)]
        self._crc = next((i for i, d in enumerate(self._specs) if d.get("role") == "checksum"), None)
        # How each dataset's row goes in. Chunks are written whole with H5Dwrite_chunk (no
        # chunk cache, no type conversion): a one-step chunk as is ("direct") or deflated by
        # hand ("deflate"); a many-step chunk of a small dataset from a buffer holding its rows
        # so far, rewritten in place each step ("block"); other filters (lzf) through HDF5's
        # pipeline ("filter").
        self._plan = []
        for ds in self._sets:
            rows = ds.chunks[0]
            dtype, comp = ds.dtype, ds.compression
            if rows > 1:
                mode = "block"
            elif comp is None:
                mode = "direct"
            elif comp == "gzip" and self._deflate_rows:
                mode = "deflate"
            else:
                mode = "filter"
            buf = np.zeros(ds.chunks, dtype) if mode == "block" else None
            if buf is not None and self.n % rows:    # continued: the last chunk's earlier rows
                buf[:self.n % rows] = ds[self.n - self.n % rows:self.n]
            self._plan.append((mode, ds.id, rows, (0,) * (ds.ndim - 1), dtype, comp is not None, buf))
        self._cap = self.n
        self._f.flush()

    def _grow(self) -> None:
        self._cap = self._cap + max(16, self._cap // 2)
        for d in self._sets:
            d.resize(self._cap, axis=0)
        # Low-level row writers: (dataset id, memory space of one row, file space, row shape, type).
        # The file space is fetched once per resize and only its selection changes per step.
        self._sinks = [(d.id, h5s.create_simple((1,) + d.shape[1:]), d.id.get_space(), d.shape[1:],
                        h5t.py_create(d.dtype)) for d in self._sets]

    @staticmethod
    def _put(sink, s: int, arr) -> None:
        dsid, mspace, fspace, shape, mtype = sink
        fspace.select_hyperslab((s,) + (0,) * len(shape), (1,) + shape)
        dsid.write(mspace, fspace, arr, mtype)

    # -- steps -------------------------------------------------------------------------------------
    def step(self, rows, *, hurry: bool = False) -> None:
        """Checksum one step, write its rows, then ``complete_steps``, then flush.

        ``rows`` are the frame's rows in spec order, each in its frame dtype; floating rows
        are stored in their dataset's dtype (float16 when lossy): the cast happens here, off
        the training process when this runs apart. ``hurry`` (the writer process is behind
        the training process): compressed rows are stored unfiltered this once — HDF5's
        per-chunk filter mask says so, and readers decode such chunks like any other — so
        compression never holds training up."""
        s = self.n
        if self._reserving:
            self._reserve()
        if s >= self._cap:
            self._grow()
        crc = 0
        for i, row in zip(self._frame, rows):
            mode, dsid, nrows, zeros, dtype, filtered, buf = self._plan[i]
            if row.dtype != dtype:
                row = row.astype(dtype)
            crc = zlib.crc32(row, crc)
            if mode == "block":
                self._block(i, s, row)
            elif hurry and filtered:  # skip both filters of this chunk: shuffle (bit 0), compressor (bit 1)
                dsid.write_direct_chunk((s,) + zeros, row, filter_mask=0b11)
            elif mode == "direct":
                dsid.write_direct_chunk((s,) + zeros, row)
            elif mode == "deflate":
                dsid.write_direct_chunk((s,) + zeros, self._deflate(row, i))
            else:
                self._put(self._sinks[i], s, row)
        if self._crc is not None:
            self._block(self._crc, s, np.array([crc], np.uint32))
        self.n = s + 1
        # Written in place (the attribute is opened once); the rows above are in before it.
        self._cs_buf[()] = self.n
        self._cs_attr.write(self._cs_buf)
        h5f.flush(self._fid)

    def _block(self, i: int, s: int, row) -> None:
        """Row ``s`` of a dataset whose chunks hold many steps: into the chunk's buffer, and
        the chunk written whole (in place: same size, same address; earlier rows unchanged)."""
        _, dsid, nrows, zeros, _, _, buf = self._plan[i]
        k = s % nrows
        if k == 0:
            buf[...] = 0
        buf[k] = row.reshape(buf.shape[1:])
        dsid.write_direct_chunk((s - k,) + zeros, buf)

    def _deflate(self, row, which: int) -> bytes:
        """HDF5's shuffle + deflate filters, built by hand (zlib), for one row.

        The result is one zlib stream, as HDF5's deflate filter writes and reads it: a header,
        then for each byte plane of the shuffled row deflate blocks, then the adler32 of the
        whole shuffled row. Each plane is coded the cheapest way that was smallest at the last
        trial (every ``retry_steps`` steps): deflate at the level asked for, Huffman-only (the
        exponent bytes of noise-like floats: faster and smaller than LZ matching), or stored
        blocks when neither saves ``1 - PLANE_RATIO`` (the low mantissa bytes, whose deflating
        would cost most of the time for nothing).
        """
        n = row.itemsize
        b = np.ascontiguousarray(np.ascontiguousarray(row).view(np.uint8).reshape(-1, n).T).reshape(-1)
        state = self._plane_state[which]
        parts = [b"\x78\x01"]  # zlib header: deflate, 32 KiB window (FLEVEL is informational)
        if state[0] <= 0:  # trial: code each plane every way, keep the smallest
            width = len(b) // n
            bounds = [p * width for p in range(n)] + [len(b)]
            runs = []
            for j in range(len(bounds) - 1):
                data = b[bounds[j]:bounds[j + 1]]
                mode = zlib.Z_FINISH if j == len(bounds) - 2 else zlib.Z_SYNC_FLUSH
                best, code = None, None
                for cand in ((self._level, zlib.Z_DEFAULT_STRATEGY), (self._level, zlib.Z_HUFFMAN_ONLY)):
                    c = zlib.compressobj(cand[0], zlib.DEFLATED, -15, 8, cand[1])
                    seg = c.compress(data) + c.flush(mode)
                    if best is None or len(seg) < len(best):
                        best, code = seg, cand
                if len(best) > self.PLANE_RATIO * len(data):
                    code = (0, zlib.Z_DEFAULT_STRATEGY)
                    best = _stored(data, mode == zlib.Z_FINISH)
                parts.append(best)
                # Adjacent planes coded alike are one run from now on.
                if runs and runs[-1][2] == code:
                    runs[-1][1] = bounds[j + 1]
                else:
                    runs.append([bounds[j], bounds[j + 1], code])
            state[0], state[1] = self._retry, runs
        else:
            runs = state[1]
            for j, (lo, hi, (level, strategy)) in enumerate(runs):
                last = j == len(runs) - 1
                if level == 0:
                    parts.append(_stored(b[lo:hi], last))
                    continue
                c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
                parts.append(c.compress(b[lo:hi]) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
        parts.append(zlib.adler32(b).to_bytes(4, "big"))
        state[0] -= 1
        return b"".join(parts)

    def swmr(self) -> None:
        """Enter SWMR-write mode (after :meth:`create`; no objects are added from here on)."""
        self._cs_attr = None                  # SWMR starts with no attribute open
        self._f.swmr_mode = True
        self._cs_attr = h5a.open(self._fid, b"complete_steps")

    def finish(self, status: str | None = None, error: str | None = None) -> h5py.File:
        """Leave SWMR mode, shrink the per-step datasets to the complete steps and return the
        file reopened for writing (the caller closes it); ``status``/``error`` are stored."""
        names = [d.name for d in self._sets] if self._sets is not None else []
        self._cs_attr = self._sets = self._sinks = None
        self._f.close()
        os.close(self._fd)
        f = h5py.File(self.path, "r+", libver=LIBVER)
        try:
            for name in names:
                f[name].resize(self.n, axis=0)
            if status is not None:
                set_status(f, status, error)
        except BaseException:
            f.close()
            raise
        return f

    def abandon(self) -> None:
        """Stop without another write into the file (after a write error of unknown extent).

        HDF5 would flush its cached metadata when the file is closed — after a failed write
        that can leave a superblock promising bytes the file does not have. So the file's
        descriptor is first pointed at a read-only ``/dev/null``: whatever HDF5 still tries to
        write fails, and the file stays as its last flush left it (SWMR-ordered, readable)."""
        self._cs_attr = self._sets = self._sinks = None
        try:
            handle = self._f.id.get_vfd_handle()
            nul = os.open(os.devnull, os.O_RDONLY)
            try:
                os.dup2(nul, handle)
            finally:
                os.close(nul)
        except Exception:  # noqa: BLE001 - best effort; the caller ends the writing either way
            pass
        try:
            os.close(self._fd)
        except OSError:
            pass
        try:
            h5py._errors.silence_errors()
        except Exception:  # noqa: BLE001
            pass
        try:
            self._f.close()
        except Exception:  # noqa: BLE001 - HDF5's last writes fail, by design
            pass


def set_status(f: h5py.File, status: str, error: str | None = None) -> None:
    """The root attributes ``status`` and, when given, ``error``; then ``strings_crc32``."""
    f.attrs["status"] = status
    if error is not None:
        f.attrs["error"] = error[:4000]
    f.attrs["strings_crc32"] = strings_crc32(f.attrs)


# root attributes held as variable-length strings (in HDF5's global heap, which has no
# checksum of its own): covered by ``strings_crc32``
STRING_ATTRS = ("format", "noisesim_version", "created", "storage_dtype", "compression", "status", "error")


def strings_crc32(attrs) -> int:
    """crc32 of the string root attributes present, as ``name=value`` lines."""
    parts = []
    for k in STRING_ATTRS:
        if k in attrs:
            v = attrs[k]
            v = v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
            parts.append(f"{k}={v}\n")
    return zlib.crc32("".join(parts).encode("utf-8", "surrogatepass"))


def _stored(data, final: bool) -> bytes:
    """``data`` as deflate stored blocks (each part of a hand-built stream starts and ends on a
    byte boundary): per block of at most 65 535 bytes a header byte (BFINAL on the last block
    of the stream), LEN and its complement, then the bytes as they are."""
    view = memoryview(data).cast("B")
    n, out = len(view), []
    for k in range(0, max(n, 1), 0xFFFF):
        m = min(0xFFFF, n - k)
        out.append(struct.pack("<BHH", int(final and k + m >= n), m, m ^ 0xFFFF))
        out.append(view[k:k + m])
    return b"".join(out)


# -- the separate process ----------------------------------------------------------------------------
class _Input:
    """Frames from a pipe, read straight into reused buffers (one per frame size); knows how
    much is waiting in the pipe (the backlog)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.raw = os.fdopen(fd, "rb", buffering=0, closefd=False)
        self.bufs: dict[int, bytearray] = {}

    def read(self, n: int) -> bytearray | None:
        """The next ``n`` bytes (valid until the next read of that size), ``None`` at the end."""
        buf = self.bufs.get(n)
        if buf is None:
            buf = self.bufs[n] = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.raw.readinto(view[got:])
            if not k:
                return None
            got += k
        return buf

    def waiting(self) -> int:
        """Bytes sitting in the pipe."""
        try:
            import fcntl
            import termios

            return struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except (ImportError, OSError):
            return 0


def serve(path: str, fin, fout) -> int:
    """Run a sink for the trace at ``path`` on frames from the file descriptor ``fin``;
    replies go to the binary stream ``fout``."""
    f = h5py.File(path, "r+", libver=LIBVER)
    src = _Input(fin)
    sink = None
    gone = "the training process ended without closing the trace"
    try:
        sink = Sink(f)
        views = None
        while True:
            head = src.read(FRAME.size)
            if head is None:          # the training process is gone: keep the whole steps
                sink.finish("interrupted", gone).close()
                return 0
            kind, length = FRAME.unpack(head)
            payload = src.read(length) if length else b""
            if payload is None:       # cut off mid-frame: that step never happened
                sink.finish("interrupted", gone).close()
                return 0
            if kind == b"S":
                buf = np.frombuffer(payload, np.uint8)          # a reused bytearray: writable
                if views is None or buf.size != views[0]:
                    raise ValueError(f"step frame of {buf.size} bytes; the schema says {views and views[0]}")
                rows, off = [], 0
                for _, width, dtype in views[1]:
                    nbytes = width * np.dtype(dtype).itemsize
                    rows.append(buf[off:off + nbytes].view(dtype))
                    off += nbytes
                # further whole steps already waiting (or, for steps larger than that, a pipe
                # half full): the training process is ahead
                ahead = min(sink.backlog_steps * len(payload), PIPE_AHEAD_BYTES)
                sink.step(rows, hurry=src.waiting() >= ahead)
            elif kind == b"L":
                spec = json.loads(bytes(payload))
                sink.create(spec)
                sink.swmr()
                sizes = row_sizes(spec)
                views = (sum(w * np.dtype(t).itemsize for _, w, t in sizes), sizes)
            elif kind in (b"F", b"C"):
                if kind == b"C":
                    sink.finish().close()
                fout.write(REPLY.pack(kind, sink.n))
                fout.flush()
                if kind == b"C":
                    return 0
            else:
                raise ValueError(f"unknown frame kind {kind!r}")
    except OutOfSpace as exc:   # nothing of the step was written: close the file as it stands
        try:
            sink.finish("failed", str(exc)).close()
        except BaseException:
            pass
        raise
    except BaseException as exc:  # a write error of unknown extent: leave the file as last flushed
        if sink is None:
            raise
        sink.abandon()
        # ending here keeps HDF5 from flushing (or closing) the file once more on the way out
        sys.stderr.write(f"{describe(exc)} while writing step {sink.n + 1}; the file keeps its first {sink.n} "
                         "steps\n")
        sys.stderr.flush()
        os._exit(1)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the training process
    if hasattr(signal, "SIGXFSZ"):                # beyond RLIMIT_FSIZE: EFBIG, not death
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    try:
        return serve(argv[0], sys.stdin.fileno(), sys.stdout.buffer)
    except BaseException as exc:  # reported to the training process through stderr
        sys.stderr.write(f"{exc}\n" if isinstance(exc, OutOfSpace) else f"{type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        return 1


if __name__ == "__main__":
    os._exit(main())
