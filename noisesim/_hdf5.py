"""Opening untrusted HDF5 files (traces, saved states) so that reading them always ends.

HDF5 follows what a file's metadata says. Damaged metadata that no checksum covers (files
written in the 1.8 format, the global heap, some heap blocks) can make it loop for ever inside
one call — deaf to Ctrl-C — or crash the process; a file can also point outside itself
(external links, external raw storage, virtual datasets) or name a filter HDF5 would load as a
plugin. :func:`open_file` therefore

1. refuses anything but a regular file (a named pipe, a device, a directory, a symlink) before
   opening it;
2. walks the whole structure once in a forked child process — every link, object header,
   attribute and chunk index — with a time limit (:data:`PROBE_SECONDS`): a child that does not
   finish in time is killed, one that crashes is reported, and a file that reaches outside
   itself or uses a filter other than deflate, shuffle, Fletcher32 and LZF is refused;
3. only then opens it in this process (read only; a file left open by a killed SWMR writer is
   opened as SWMR reader).

Any problem raises :class:`UnsafeFile` (a ``ValueError``) naming the file and the problem.
Where ``os.fork`` is missing step 2 is skipped.
"""
from __future__ import annotations

import faulthandler
import os
import select
import signal
import stat
import time

import h5py
from h5py import h5a, h5d, h5z

PROBE_SECONDS = 20.0          # a structure walk still running after this is a damaged file
MAX_OBJECTS = 200_000         # objects a walk visits (hard links can form cycles)
MAX_ATTR_BYTES = 1 << 24      # attribute values the walk reads (larger ones are refused)
FILTERS = {h5z.FILTER_DEFLATE: "deflate", h5z.FILTER_SHUFFLE: "shuffle", h5z.FILTER_FLETCHER32: "fletcher32",
           32000: "lzf"}


class UnsafeFile(ValueError):
    """An HDF5 file that cannot be read safely; the message names the file and the problem."""


def check_path(path: str) -> None:
    """Refuse, before opening anything, what is not a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UnsafeFile(f"{path}: no such file") from None
    except OSError as exc:
        raise UnsafeFile(f"{path}: cannot inspect the file ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFile(f"{path}: is a symbolic link; give the file it points to ({os.path.realpath(path)})")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise UnsafeFile(f"{path}: is {kind}, not a regular file")


def _open(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        msg = str(exc)
        if "already open for write" not in msg:
            raise UnsafeFile(f"{path}: not a readable HDF5 file ({msg})") from None
    try:   # a writer killed in SWMR mode: its last flush is consistent
        return h5py.File(path, "r", swmr=True)
    except OSError:
        raise UnsafeFile(f"{path}: the file was left open for writing by a writer that was killed outside "
                         "recording (while writing its header or final state); `h5clear -s FILE` clears the "
                         "flag") from None


def _refuse(path, msg):
    raise UnsafeFile(f"{path}: {msg}")


def _attrs(path: str, obj) -> None:
    """Open every attribute of ``obj`` and read its value (bounded)."""
    for name in obj.attrs:
        aid = h5a.open(obj.id, name.encode() if isinstance(name, str) else name)
        n = aid.get_space().get_simple_extent_npoints()
        size = aid.dtype.itemsize * max(n, 1)
        if size > MAX_ATTR_BYTES:
            _refuse(path, f"attribute {name!r} of {obj.name!r} declares {size} bytes")
        obj.attrs[name]


def _dataset(path: str, ds: h5py.Dataset) -> None:
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        _refuse(path, f"dataset {ds.name!r} is a virtual dataset (its data lives in other files); refused")
    if dcpl.get_external_count() > 0:
        _refuse(path, f"dataset {ds.name!r} keeps its data in external files; refused")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in FILTERS:
            _refuse(path, f"dataset {ds.name!r} uses HDF5 filter {code}, not one of {sorted(FILTERS.values())}; "
                    "refused (HDF5 would load it as a plugin)")
    ds.shape, ds.dtype   # dataspace and datatype messages
    if layout == h5d.CHUNKED:
        n = ds.id.get_num_chunks()
        seen = [0]

        def visit(_info):
            seen[0] += 1

        if hasattr(ds.id, "chunk_iter"):
            ds.id.chunk_iter(visit)
        else:  # pragma: no cover - older HDF5
            for i in range(n):
                ds.id.get_chunk_info(i)
                seen[0] += 1
        if seen[0] != n:
            _refuse(path, f"dataset {ds.name!r}: its chunk index lists {seen[0]} chunks, it counts {n}")
    _attrs(path, ds)


def walk(path: str) -> None:
    """Open the file and visit its whole structure (raises on anything refused)."""
    f = _open(path)
    try:
        _attrs(path, f)
        stack, count = [f], 0
        while stack:
            g = stack.pop()
            for name in g:
                link = g.get(name, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    what = {h5py.SoftLink: "a soft link", h5py.ExternalLink: "an external link"}.get(
                        type(link), "a user-defined link")
                    _refuse(path, f"{g.name.rstrip('/')}/{name} is {what} ({type(link).__name__}); only objects "
                            "stored in the file are read")
                count += 1
                if count > MAX_OBJECTS:
                    _refuse(path, f"more than {MAX_OBJECTS} objects (or a cycle of hard links)")
                obj = g[name]
                if isinstance(obj, h5py.Dataset):
                    _dataset(path, obj)
                elif isinstance(obj, h5py.Group):
                    _attrs(path, obj)
                    stack.append(obj)
                else:
                    _refuse(path, f"{obj.name!r} is neither a group nor a dataset")
    finally:
        f.close()


def probe(path: str, seconds: float | None = None) -> None:
    """:func:`walk` in a forked child with a time limit (see the module docstring)."""
    if not hasattr(os, "fork"):   # pragma: no cover - no fork (Windows)
        return
    seconds = PROBE_SECONDS if seconds is None else seconds
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: walk, report, and end without running the parent's exit handlers
        code, msg = 0, b""
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            faulthandler.disable()        # a crash here is reported by the parent, in words
            walk(path)
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            code = 3
            msg = (str(exc) if isinstance(exc, UnsafeFile) else
                   f"{path}: the file is damaged: HDF5 cannot read its structure ({type(exc).__name__}: {exc})").encode("utf-8", "replace")
        try:
            os.write(w, msg[:16000])
        finally:
            os._exit(code)
    os.close(w)
    chunks, status = [], None
    try:
        deadline = time.monotonic() + seconds
        poller = select.poll()
        poller.register(r, select.POLLIN | select.POLLHUP)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                if time.monotonic() >= deadline:
                    break
                continue
            data = os.read(r, 65536)
            if not data:
                break
            chunks.append(data)
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            status = None
            time.sleep(0.005)
    finally:
        os.close(r)
        if status is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    if status is None:
        raise UnsafeFile(f"{path}: reading the file's HDF5 structure did not end within {seconds:g} s; the file is "
                         "damaged (HDF5 can loop for ever on damaged metadata)")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        raise UnsafeFile(f"{path}: HDF5 crashed (signal {sig}, {signal.Signals(sig).name}) reading the file's "
                         "structure; the file is damaged")
    if os.WEXITSTATUS(status) != 0:
        msg = b"".join(chunks).decode("utf-8", "replace") or f"{path}: the file's structure could not be read"
        raise UnsafeFile(msg)


def open_file(path, *, seconds: float | None = None) -> h5py.File:
    """``path`` opened read only, after :func:`check_path` and :func:`probe`."""
    path = os.fspath(path)
    check_path(path)
    probe(path, seconds)
    return _open(path)



def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``, else free
    physical pages; ``None`` when unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
