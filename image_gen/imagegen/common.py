"""Helpers that both models need: command-line checks, devices, atomic files, checkpoints, plots,
progress reports, logs, Ctrl-C handling, and training in several processes under torchrun.

This file exists twice, as image_gen/imagegen/common.py and audio_gen/audiogen/common.py, byte for byte
(tests/test_shared_helpers.py compares the whole files), so that neither model imports the other's code.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm


# --- command line ---------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits with code 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help that names each default, except where there is none to name (None, False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def number(kind, low=None, high=None, low_open=False):
    """argparse type: a number of `kind` inside [low, high] (or (low, high] with low_open)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            if high is None:
                bounds = f"{'>' if low_open else '>='} {low}"
            elif low is None:
                bounds = f"<= {high}"
            else:
                bounds = f"in {'(' if low_open else '['}{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


class UsageError(SystemExit):
    """Exit code 2, as argparse gives; `message` keeps what was wrong for callers that catch it (the web demo)."""

    def __init__(self, message):
        super().__init__(2)
        self.message = message


def usage_error(message):
    """A bad argument found only after reading a checkpoint: one line on stderr and exit code 2, as argparse."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise UsageError(message)


def given_flags(parser, argv):
    """The destinations of the options that `argv` spells out, defaults left out: e.g. {'epochs', 'seed'}."""
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS  # absent flags then stay out of the namespace
        return set(vars(parser.parse_known_args(argv)[0]))
    finally:
        for action, default in defaults.items():
            action.default = default


def reject_flags_of_other_modes(parser, argv, mode, modes_of):
    """Exit with a usage error when a flag given in `argv` does nothing in `mode`; `modes_of` maps a
    destination to the modes that read it (destinations it leaves out apply to every mode)."""
    flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    for dest in sorted(given_flags(parser, argv)):
        if dest in modes_of and mode not in modes_of[dest]:
            parser.error(f"{flags[dest]} applies to --mode {' or '.join(sorted(modes_of[dest]))}, not {mode}")


def resolve_path(path, default, base):
    """The default relative path lives under `base` (the script's folder); paths the user typed are taken as given."""
    path = Path(path)
    if str(path) == default and not path.is_absolute():
        return Path(base) / path
    return path


def resolve_device(name, parser):
    """--device as a torch.device: cuda when available by default; unknown or missing devices are usage errors."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: unknown device {name!r} (try cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: only cpu and cuda are supported")
    return device


# --- files ----------------------------------------------------------------------------------

def atomic_torch_save(obj, path):
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(data, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def checkpoint_name(path):
    """How logs and tables name a checkpoint: its file name, or an exported folder's last two path parts (so a
    prior or vocoder exported beside an autoencoder reads 'my-vae/prior', not 'prior')."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.is_dir() else path.name


def read_json(path):
    """The JSON object in `path`, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def load_checkpoint(path, expected_format, versions):
    """Load a checkpoint with weights_only=True (no pickled code runs), or an exported folder (export_weights);
    any problem ends the program with one clear line. `versions`: the checkpoint versions of `expected_format`
    that the caller can read."""
    path = Path(path)
    if path.is_dir():
        state = read_exported(path)
    elif not path.is_file():
        raise SystemExit(f"error: checkpoint {path} does not exist (train first, or pass --checkpoint)")
    else:
        try:
            with warnings.catch_warnings():  # garbage that starts like a pickle warns first; one error line is enough
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, pickle error, not a torch file at all
            raise SystemExit(f"error: cannot read checkpoint {path}: it is truncated or not a PyTorch file "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise SystemExit(f"error: {path} is not an ImageAudioGen checkpoint of type {expected_format!r}")
    if state.get("version") not in versions:
        raise SystemExit(f"error: {path} has checkpoint version {state.get('version')}; this program reads "
                         f"version {', '.join(map(str, versions))} (train a new one)")
    return state


# --- exported weights: safetensors + config.json ------------------------------------------------

PROJECT_VERSION = "0.5.0"  # pyproject.toml reads it from here
EXPORT_VERSION = 1         # the layout of an exported folder; a newer one is refused, not misread
EXPORT_CONFIG, EXPORT_WEIGHTS = "config.json", "model.safetensors"


def jsonable(value, where="config"):
    """`value` as plain JSON types (tuples as lists, paths as strings); a tensor or another object outside the
    weights is a ValueError naming where it is, never silently turned into text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where} is a {type(value).__name__}, which config.json cannot hold")


def export_weights(state, export_dir, weights, drop):
    """Write a loaded checkpoint `state` as an exported folder: the state dicts named in `weights` into
    model.safetensors (each tensor as '<name>.<key>'), every other field except those in `drop` (optimizer,
    RNG and other resume-only state) into config.json, with "weights" naming the state dicts and the
    project's version. Both files are written atomically."""
    from safetensors.torch import save_file
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{key}": value.detach().cpu().contiguous()
               for name in weights for key, value in state[name].items()}
    config = {k: jsonable(v, k) for k, v in state.items() if k not in weights and k not in drop}
    config.update(export_version=EXPORT_VERSION, package_version=PROJECT_VERSION, weights=list(weights))
    tmp = export_dir / (EXPORT_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": str(state.get("format"))})
    os.chmod(tmp, 0o644)  # a file to share: readable by all, like config.json
    os.replace(tmp, export_dir / EXPORT_WEIGHTS)
    write_json_atomic(config, export_dir / EXPORT_CONFIG)
    return export_dir


def read_exported(folder):
    """The checkpoint fields of an exported folder (export_weights): config.json's fields, with each state dict
    it names rebuilt from model.safetensors. A folder without config.json, a newer layout or a missing weights
    file ends the program with one line."""
    from safetensors.torch import load_file
    config_path, weights_path = folder / EXPORT_CONFIG, folder / EXPORT_WEIGHTS
    if not config_path.is_file():
        raise SystemExit(f"error: {folder} is a folder without {EXPORT_CONFIG}: give a checkpoint file or a "
                         f"folder written by --mode export")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise SystemExit(f"error: {config_path} is not valid JSON ({err})")
    if not isinstance(config, dict) or not isinstance(config.get("export_version"), int) \
            or not isinstance(config.get("weights"), list):
        raise SystemExit(f"error: {config_path} is not an ImageAudioGen export (no export_version or weights)")
    if config["export_version"] > EXPORT_VERSION:
        raise SystemExit(f"error: {folder} was exported by a newer ImageAudioGen ({config.get('package_version')}, "
                         f"export format {config['export_version']}); this one ({PROJECT_VERSION}) reads format "
                         f"{EXPORT_VERSION}: update the code")
    if not weights_path.is_file():
        raise SystemExit(f"error: {folder} has {EXPORT_CONFIG} but no {EXPORT_WEIGHTS}")
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:  # truncated or not a safetensors file
        raise SystemExit(f"error: cannot read {weights_path}: it is truncated or not a safetensors file "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    state = {k: v for k, v in config.items() if k not in ("export_version", "package_version", "weights")}
    for name in config["weights"]:
        prefix = name + "."
        state[name] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state[name]:
            raise SystemExit(f"error: {weights_path} holds no '{name}' weights, which {EXPORT_CONFIG} names")
    return state


# --- plots ----------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the Agg backend: plots are written to files, never shown."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --- progress, logs and Ctrl-C ----------------------------------------------------------------

class _Lines:
    """A progress report for output that is not a terminal (a log, a pipe, CI): one plain line every
    `interval` seconds instead of a redrawn bar, so a long job says what it is doing without flooding."""

    def __init__(self, iterable, desc, total, initial, unit, interval):
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        self.total = total if total is not None else (len(iterable) + initial if hasattr(iterable, "__len__") else None)
        self.done, self.postfix = initial, ""
        self.start = self.last = time.perf_counter()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.done += 1
            now = time.perf_counter()
            if now - self.last >= self.interval:
                self.last = now
                of = f"/{self.total}" if self.total is not None else ""
                print(f"  {self.desc}: {self.done}{of} {self.unit}, {now - self.start:.0f}s{self.postfix}", flush=True)

    def set_postfix(self, **values):
        self.postfix = "".join(f", {key} {value}" for key, value in values.items())


def progress_bar(iterable, desc, total=None, initial=0, unit="steps", enabled=True, interval=30.0):
    """A tqdm bar on a terminal; elsewhere a plain line every `interval` s ('epoch 2/20: 300/937 steps, 31s').
    Either offers set_postfix. `unit`: what is counted, in the plural."""
    if not enabled:
        return _Lines(iterable, desc, total, initial, unit, math.inf)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, mininterval=1.0, leave=False,
                    dynamic_ncols=True)
    return _Lines(iterable, desc, total, initial, unit, interval)


class _Tee:
    """A text stream that writes to `stream` and appends to `log`; redrawn progress bars ('\\r') stay out of the log."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        if "\r" not in text:
            self.log.write(text)
            self.log.flush()
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def logged_to(path):
    """Everything printed meanwhile also goes to `path` (appended), after a line naming the command and time,
    and so does the message of a SystemExit that ends the job (Python prints it only after the tee is gone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}  {' '.join(sys.argv)}\n")
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
        try:
            yield path
        except SystemExit as stop:
            if isinstance(stop.code, str):
                log.write(stop.code.lstrip("\n") + "\n")
            raise
        finally:
            sys.stdout, sys.stderr = stdout, stderr


def first_nonfinite(values):
    """Index of the first NaN or infinity in a list of floats, or None."""
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None)


class StopRequest:
    """While active, the first Ctrl-C (SIGINT) only asks training to stop after the current step and
    save; a second one raises KeyboardInterrupt at once. Inactive outside the main thread.

    With a `world` of several processes, `requested` changes only in `poll()`, which every process calls
    after each step and at each epoch's end: the processes agree (one all-reduce and a host synchronisation)
    every `every` steps and at every boundary, so all stop after the same step. A CPU step (tenths of a
    second) dwarfs that cost, so CPU processes agree after every step; GPU steps take milliseconds, so GPU
    processes agree every 25 (still well under a second after a Ctrl-C), and the host keeps queueing work
    between loss reads. In one process `poll()` changes nothing."""

    def __init__(self, world=None, every=None):
        self.requested = False
        self._asked = False
        self._world = world if world is not None and world.active else None
        gpu = self._world is not None and torch.device(self._world.device).type == "cuda"
        self.every = every or (25 if gpu else 1)
        self._steps = 0
        self._installed = False
        self._previous = None

    def _handle(self, signum, frame):
        if self._asked:
            raise KeyboardInterrupt
        self._asked = True
        if self._world is None:
            self.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again quits without saving)",
              flush=True)

    def poll(self, boundary=False):
        """Whether to stop now; with several processes, as they last agreed (after every `every`-th step, or
        now at a `boundary`, an epoch's end)."""
        if self._world is not None:
            self._steps += not boundary
            if boundary or self._steps % self.every == 0:
                self.requested = self._world.any(self._asked)
        return self.requested

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


# --- TensorBoard ----------------------------------------------------------------------------

class Board:
    """TensorBoard event files in `folder` (`tensorboard --logdir RESULTS_DIR/tensorboard`): every number of each
    epoch's record, and the pictures and sounds a training makes. Writes nothing where `enabled` is false (the
    processes other than rank 0 under torchrun), and says once where tensorboard is not installed."""

    def __init__(self, folder, enabled=True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("note: tensorboard is not installed: no TensorBoard logs (pip install tensorboard)", flush=True)
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def record(self, record, step, prefix=""):
        """Each number in `record` (nested dicts give 'a/b' names; None, text and lists are skipped)."""
        if self.writer is None:
            return
        for name, value in record.items():
            if isinstance(value, dict):
                self.record(value, step, f"{prefix}{name}/")
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}{name}", value, step)

    def image(self, tag, image, step):
        """A (C, H, W) picture in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image.float().clamp(0, 1).cpu(), step)

    def audio(self, tag, wave, step, sample_rate):
        """A (samples,) waveform in [-1, 1], which TensorBoard plays."""
        if self.writer is not None:
            self.writer.add_audio(tag, wave.float().clamp(-1, 1).cpu()[None], step, sample_rate=sample_rate)

    def close(self):
        if self.writer is not None:
            self.writer.close()


# --- several processes (torchrun) -----------------------------------------------------------

class World:
    """This process's place among those that torchrun started (its RANK, WORLD_SIZE and LOCAL_RANK), or a
    world of one without torchrun, where every method does nothing and the code runs as it always did.

    Several processes join one process group (`session`): NCCL on CUDA, gloo on the CPU. Rank 0 is the
    main process: it alone prints and writes files."""

    def __init__(self, rank=0, size=1, local_rank=0):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.device = torch.device("cpu")  # where collectives put their tensors; set by `session`

    @classmethod
    def from_environment(cls, environ=None):
        """The world torchrun describes in the environment; a world of one when WORLD_SIZE is unset or 1."""
        environ = os.environ if environ is None else environ
        size = int(environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(environ["RANK"]), size, int(environ.get("LOCAL_RANK", "0")))

    @property
    def active(self):
        return self.size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def check_command_line(self, parser, mode, batch_size):
        """Several processes (torchrun) may only train, and must share each batch equally: else a usage error."""
        if not self.active:
            return
        if mode != "train":
            parser.error(f"--mode {mode} runs in one process: start it without torchrun")
        if batch_size % self.size:
            parser.error(f"--batch_size {batch_size} is the global batch and must divide evenly over the "
                         f"{self.size} processes")

    def process_device(self, device):
        """This process's device: CUDA device LOCAL_RANK under torchrun, else `device` itself."""
        return torch.device("cuda", self.local_rank) if self.active and device.type == "cuda" else device

    @contextlib.contextmanager
    def session(self, device, timeout_hours=3):
        """Within: the process group (a world of one: nothing). Collectives wait up to `timeout_hours` for
        the slowest process (rank 0 alone writes outputs meanwhile). Leaving it normally waits for all."""
        if not self.active:
            yield self
            return
        import torch.distributed as dist
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None,  # NCCL binds its GPU now
                                timeout=datetime.timedelta(hours=timeout_hours))
        try:
            yield self
            dist.barrier()
        finally:
            dist.destroy_process_group()

    @contextlib.contextmanager
    def quiet(self):
        """Other ranks than 0 print nothing (rank 0 says it all) and end without repeating rank 0's message;
        an unexpected error still shows its traceback."""
        if self.is_main:
            yield
            return
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            try:
                yield
            except SystemExit as stop:
                raise SystemExit(1 if isinstance(stop.code, str) else stop.code) from None

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (filling caches), then the others (reading them)."""
        if self.active and not self.is_main:
            self.barrier()
        yield
        if self.active and self.is_main:
            self.barrier()

    def barrier(self):
        if self.active:
            torch.distributed.barrier()

    def share(self, n):
        """The rows of a batch of `n` (divisible by the world size) that this process takes: a slice."""
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def any(self, flag):
        """True on every process when `flag` is true on any."""
        if not self.active:
            return bool(flag)
        value = torch.tensor([int(bool(flag))], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, values):
        """The mean over processes of a float tensor of the same shape on each."""
        if not self.active:
            return values
        total = values.to(self.device, torch.float32, copy=True)
        torch.distributed.all_reduce(total)
        return (total / self.size).to(values.device)

    def gather_rows(self, rows):
        """Every process's `rows` (k, ...) concatenated in rank order ((sum of k, ...)); k may differ."""
        if not self.active:
            return rows
        counts = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.size)]
        torch.distributed.all_gather(counts, torch.tensor([len(rows)], device=self.device))
        counts = [int(c.item()) for c in counts]
        padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        padded[:len(rows)] = rows.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([part[:k] for part, k in zip(parts, counts)]).to(rows.device)

    def gather_objects(self, obj):
        """[every process's `obj`] in rank order (picklable objects)."""
        if not self.active:
            return [obj]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every process (picklable objects)."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
