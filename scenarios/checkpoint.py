"""Checkpoints of training runs: save the complete state every N steps, continue after a crash.

A checkpoint of one :func:`scenarios.train` run is one HDF5 file (:func:`noisesim.state.save`
layout, no pickle) holding

* ``network`` — :meth:`noisesim.Network.state`: weights and every device internal, the
  decorrelation matrices and the position of every named random stream;
* ``rule`` — :meth:`rules.Rule.state`: its config, the optimizer's moments, its own arrays
  (feedback matrices);
* ``run`` — where the loop stands: the epoch, the steps done in it, this epoch's data order
  ``perm`` (drawn once per epoch from the network's ``data`` stream), the step losses so far,
  and the :class:`~scenarios.train.History` up to here (``done`` once the run ended).

Files are written atomically (a temporary file in the same folder, flushed to disk, then
renamed over the old one): a process killed mid-write leaves the previous checkpoint whole.
Continuing from a checkpoint takes exactly the steps of the run that was not interrupted
(same backend, dtype and config): weights, losses and metrics bit for bit.

>>> ck = scenarios.Checkpoint("ckpt.h5", every=50)                               # doctest: +SKIP
>>> h = scenarios.train(net, rule, data, epochs=5, checkpoint=ck)   # killed?   # doctest: +SKIP
>>> h = scenarios.train(net, rule, data, epochs=5, checkpoint=ck)   # continues # doctest: +SKIP

A whole scenario run (several rules, seeds, learning-rate trials — several ``train`` calls)
checkpoints through a :func:`session` on a folder: each ``train`` call gets the file
``<label>-<n>.h5`` in it (the n-th run of that label). ``noisesim run … --checkpoint-every N`` opens one in
``<out>/checkpoint/`` (with ``command.json``, the command to continue); ``noisesim run
--resume <out>`` runs the same command again, and every ``train`` call that finished returns
its saved history and final state at once, the interrupted one continues where its last
checkpoint stood, and the rest run as usual.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

import noisesim.state

VERSION = 1
COMMAND = "command.json"


@contextlib.contextmanager
def replacing(path):
    """A fresh temporary path beside ``path`` (uniquely named: two writers of one path never
    share one); when the block ends cleanly it is flushed to disk and renamed over ``path``,
    else removed. Readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`replacing`)."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, allow_nan=True, default=_plain).encode())


def save_state(path, state: dict) -> None:
    """:func:`noisesim.state.save` atomically (:func:`replacing`)."""
    with replacing(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = "noisesim-state"
            noisesim.state.write(f, state)


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass
class Position:
    """Where a restored run continues: ``epoch`` (1-based, the one in progress), ``step``
    (steps of it already done), its data order ``perm`` and step ``losses`` so far."""

    epoch: int
    step: int
    perm: np.ndarray | None
    losses: list = field(default_factory=list)


class Checkpoint:
    """The checkpoint file of one training run: saved every ``every`` steps and at the end.

    ``every=None`` (or 0) saves only the final state. Passed to :func:`scenarios.train` as
    ``checkpoint=``; when the file exists, ``train`` continues from it (or, when it holds a
    finished run, restores the final state and returns its history without training).
    """

    def __init__(self, path, every: int | None = None, *, label: str | None = None):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
            raise ValueError(f"checkpoint every={every!r} is out of range; allowed: an integer ≥ 0 (steps)")
        self.path = Path(path)
        self.every = every or 0
        self.label = label
        self.resumed_at: int | None = None   # the step a restored run continued from
        self.history = None                  # the History once the run ended

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, every={self.every})"

    # -- writing ---------------------------------------------------------------------------------
    def due(self, steps: int) -> bool:
        return self.every > 0 and steps % self.every == 0

    def save(self, net, rule, hist, pos: Position, *, done: bool = False) -> None:
        """Write the complete state of the run now (atomically)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        h = asdict(hist)
        run = {"version": VERSION, "label": hist.rule, "done": done, "epoch": pos.epoch, "step": pos.step,
               "history": h, "losses": np.asarray(pos.losses) if pos.losses else None,
               "perm": None if pos.perm is None else np.asarray(pos.perm)}
        # the loop's arrays in a group of their own, its JSON values in the "run" entry
        state = {"network": net.state(), "rule": rule.state(),
                 "run": {k: v for k, v in run.items() if v is not None and not isinstance(v, np.ndarray)},
                 "arrays": {k: v for k, v in run.items() if isinstance(v, np.ndarray)}}
        save_state(self.path, state)
        if done:
            self.history = hist

    # -- reading ---------------------------------------------------------------------------------
    def restore(self, net, rule, hist) -> Position | None:
        """Put the saved state into ``net``, ``rule`` and ``hist``; ``None`` when there is no file.

        Returns the :class:`Position` to continue from (``epoch = None`` when the saved run had
        ended). Raises ``ValueError`` when the file belongs to another run (its label, network
        or rule config differ); the run should not go on then.
        """
        if not self.path.exists():
            return None
        s = noisesim.state.load(self.path)
        run, arrays = s.get("run") or {}, s.get("arrays") or {}
        if run.get("version") != VERSION:
            raise ValueError(f"{self.path}: checkpoint version {run.get('version')!r}; this version reads {VERSION}")
        if run.get("label") != hist.rule:
            raise ValueError(f"{self.path}: checkpoint of run {run.get('label')!r}, not of {hist.rule!r}; "
                             "was the command or its settings changed?")
        net.load_state(s["network"])
        rule.load_state(s["rule"], net)
        for k, v in run["history"].items():
            setattr(hist, k, v)
        self.resumed_at = hist.steps
        if run.get("done"):
            self.history = hist
            return Position(epoch=None, step=0, perm=None)
        losses = list(arrays["losses"]) if "losses" in arrays else []
        return Position(epoch=int(run["epoch"]), step=int(run["step"]), perm=arrays.get("perm"), losses=losses)


# ------------------------------------------------------------------------------- sessions
_SESSION: contextvars.ContextVar["Session | None"] = contextvars.ContextVar("noisesim_checkpoints", default=None)


class Session:
    """Checkpoints of every :func:`scenarios.train` call of one run, in one folder.

    A call gets the file ``<label>-<n>.h5``: its run's label and how many calls with that
    label came before it (a scenario makes its runs in an order fixed by its config; counting
    per label keeps the names when a continued run skips some calls, e.g. a learning-rate
    search found in the cache). ``runs`` lists each call's :class:`Checkpoint` in order (with
    its ``history`` once done).
    """

    def __init__(self, directory, every: int | None = None):
        self.directory = Path(directory)
        self.every = every or 0
        self.runs: list[Checkpoint] = []
        self._seen: dict = {}

    def next(self, label: str) -> Checkpoint:
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", label).strip("-") or "run"
        n = self._seen[slug] = self._seen.get(slug, -1) + 1
        ck = Checkpoint(self.directory / f"{slug}-{n}.h5", self.every, label=label)
        self.runs.append(ck)
        return ck


@contextlib.contextmanager
def session(directory, every: int | None = None):
    """Checkpoint every :func:`scenarios.train` call made inside the ``with`` block (this
    thread) into ``directory``; yields the :class:`Session`."""
    s = Session(directory, every)
    s.directory.mkdir(parents=True, exist_ok=True)
    token = _SESSION.set(s)
    try:
        yield s
    finally:
        _SESSION.reset(token)


def for_run(checkpoint, label: str) -> Checkpoint | None:
    """The :class:`Checkpoint` a ``train`` call uses: ``checkpoint`` itself (a path becomes a
    final-state-only checkpoint), else the active :func:`session`'s next one, else ``None``."""
    if checkpoint is None:
        s = _SESSION.get()
        return None if s is None else s.next(label)
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    return Checkpoint(checkpoint)


# ------------------------------------------------------------------------------- the command line
def add_run_options(parser) -> None:
    parser.add_argument("--checkpoint-every", type=int, metavar="N",
                        help="save the complete state every N steps into OUT/checkpoint/ "
                             "(continue with noisesim run --resume OUT)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the run in DIR (its --checkpoint-every checkpoints) with its command")


def resume_argv(directory) -> list[str]:
    """The command line (without ``noisesim``) of the checkpointed run in ``directory``."""
    path = Path(directory) / "checkpoint" / COMMAND
    if not path.exists():
        raise FileNotFoundError(f"{directory} has no checkpointed run ({path} is missing); "
                                "start one with noisesim run … --checkpoint-every N --out DIR")
    argv = json.loads(path.read_text())["argv"]
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"{path}: 'argv' is not a list of strings")
    return argv


def cli_session(args, out_dir):
    """The checkpoint :func:`session` of ``noisesim run`` (a null context without
    ``--checkpoint-every``); records the command to resume with in ``OUT/checkpoint/``."""
    every = getattr(args, "checkpoint_every", None)
    if every is None:
        return contextlib.nullcontext()
    if every < 1:
        raise ValueError(f"--checkpoint-every {every} is out of range; allowed: an integer ≥ 1 (steps)")
    directory = Path(out_dir) / "checkpoint"
    directory.mkdir(parents=True, exist_ok=True)
    argv, skip = [], False
    for a in args.cli_argv:            # the folder goes in as an absolute path: resumable from anywhere
        if skip or a == "--out" or a.startswith("--out="):
            skip = a == "--out"
            continue
        argv.append(a)
    argv += ["--out", str(Path(out_dir).resolve())]
    if not (directory / COMMAND).exists():
        atomic_write_json(directory / COMMAND, {"argv": argv})
    return session(directory, every)


def resumed_args(args, parser):
    """``args`` of ``noisesim run --resume DIR``: the recorded command of DIR, parsed again."""
    if args.scenario is not None:
        raise ValueError("--resume DIR takes the scenario and settings from DIR; give no scenario with it")
    argv = resume_argv(args.resume)
    new = parser.parse_args(argv)
    new.cli_argv = argv
    new.argv = ["noisesim", *argv]
    if getattr(args, "no_progress", False):
        new.no_progress = True
    return new
