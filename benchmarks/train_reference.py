"""TA3N training, avda against the authors' code, side by side on an EPIC-100-size feature set.

Trains TA3N with the EPIC-100 script's settings (``script_test_ta3n.sh`` of
``jonmun/EPIC-KITCHENS-100_UDA_TA3N``: ALL = RGB + Flow + Audio, 5 of 25 snippets, trn-m,
TransAttn, add_fc 1, fc_dim 512, share_params Y, dropout 0.5 / 0.5, beta 0.75 / 0.75 / 0.5 with
``--dann_warmup``, attentive entropy gamma 0.003, SGD Nesterov lr 3e-3, momentum 0.9, weight
decay 1e-4, lr / 10 at epochs 10 and 20, gradient clip 20, batch 128 source + 207 target,
``-j 4`` loading workers) once in the authors' code and once in avda, on the same synthetic
cache as ``benchmarks/train.py`` (16,115 source + 26,115 target training segments, 512
labelled target test segments, 25 x 1024 features per modality; ``--quick``: a tenth), and
prints, as markdown tables: source and source + target training segments per second of each,
avda / reference, seconds per epoch, the time to load the features, peak resident memory, how
busy the (possibly shared) machine was (load average, which counts the side's own threads and
workers, and the CPU cores used by the side and by all other processes during its run), and
per epoch the training loss and the target test top-1 (verb, noun) of both, so the accuracy
curves can be compared. Each side runs in its own process, one after the other (avda first).
On a shared machine PyTorch's intra-op threads slow down a lot when the cores are busy: compare
runs whose "other processes" column is near 0, or use ``--threads 1``.

The authors' code is not part of avda: ``--reference PATH`` (or ``AVDA_TA3N_REFERENCE``) names
a checkout, which is imported from there, as ``tests/train/test_heads_ta3n.py`` does.

Inputs of the reference. The cache's source train, target train and target test splits are
written once under ``--cache-dir/ta3n-reference-{quick,full}/`` in the released EPIC-100 UDA
layout: feature pickles ``{'features': {'RGB', 'Flow', 'Audio'}: float32 [N, 25, 1024],
'narration_ids': [...]}`` written by avda's exporter (``avda cache export --format epic-pkl``,
:func:`avda.cache.interop.export_epic_pickle`), and annotation pickles (DataFrames indexed by
``narration_id``, as ``EPIC_100_uda_*.pkl``): the source train and target test lists carry
``verb_class`` / ``noun_class``, the target train list none (as the released
``EPIC_100_uda_target_train_timestamps.pkl``). Full size: 13 GB of pickles, and the reference
needs about 21 GiB of memory (it holds every feature, and a pickle twice while loading it).

How the reference runs (a child process; ``main.py`` unchanged): its ``main()`` is called with
the script's training command line (``--epochs`` set to this benchmark's), so its own argument
parsing, ``TSNDataSet`` (the whole pickle in memory, one dictionary lookup and copy per snippet
per segment), ``DataLoader`` with 4 worker processes, ``VideoModel``, optimiser, epoch loop and
``train()`` all run as written. Shims, for a CPU-only machine:

- ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return ``self``; ``DataParallel`` without
  a GPU calls the module directly (PyTorch's own behaviour); ``main.gpu_count`` is set to 1
  (``torch.cuda.device_count()`` is 0 on CPU, and ``train()`` pads batches to a multiple of it);
  the DataLoader gets ``pin_memory=False`` (PyTorch would turn it off with a warning);
- ``main.accuracy`` (the per-batch training top-1/5) is replaced by the same computation with
  ``reshape`` for ``view``: its ``view`` of a transposed tensor fails on PyTorch >= 1.5;
- ``colorama`` and ``tensorboardX`` are stubbed when not installed, and ``builtins.torch`` is
  set (``models.py`` relies on an old ``from torch.nn.init import *`` export);
- ``--tensorboard`` of the script is left out: it only logs (and makes ``train()`` concatenate
  every batch's features for an embedding plot);
- evaluation: ``main()`` evaluates on the *target training* loader, and only when its list is
  labelled (the released one is not; then it saves a checkpoint instead). The benchmark calls
  the authors' ``validate()`` after each epoch on the labelled target test split, loaded as
  ``test_models.py`` does (``TSNDataSet`` in test mode, batch 128), outside the timed epoch;
- timing: ``main.train`` is wrapped; an epoch's time is the whole ``train()`` call (DataLoader
  workers starting included), like avda's per-epoch ``seconds`` (evaluation excluded).
  The training loss is ``train()``'s running mean of the total loss (its ``losses`` meter).
- ``--reference-steps N``: each reference epoch stops after N iterations (the schedules still
  count the full epoch); the epoch time is extrapolated as the measured N iterations plus the
  remaining ones at the mean time of iterations 2..N, and the reference's accuracy is then
  that of a partial epoch (marked so).

avda runs ``avda.train.loop.train`` (head ``ta3n``, the same settings, float32 or with
``--precision bf16`` bfloat16 autocast, evaluation on the target test split after each epoch)
as ``benchmarks/train.py`` does, in a second child process, with the same number of PyTorch
threads. Segment counts per epoch are the same on both sides: all source segments and
min(T, iterations x 207) target segments. The two sides start from different random weights
and draw batches in different orders (the reference seeds 1 at import, avda seed 0), so the
curves agree statistically, not to the digit; the numerical equality of one training step is
``tests/train/test_heads_ta3n.py::test_live_parity``.

    python benchmarks/train_reference.py --reference ~/EPIC-KITCHENS-100_UDA_TA3N --quick
    python benchmarks/train_reference.py --reference REF --epochs 3       # full size, ~5 min
    python benchmarks/train_reference.py --reference REF --epochs 3 --reference-steps 40
    python benchmarks/train_reference.py --reference REF --epochs 3 --precision bf16
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import importlib.util
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import train as bench_train  # noqa: E402  (benchmarks/train.py: the cache and its sizes)

SOURCE_BATCH, TARGET_BATCH, TEST_BATCH = 128, 207, 128  # -b 128 207 128 of the script
NUM_SEGMENTS = 5


def script_arguments(inputs: ReferenceInputs, exp_path: Path, epochs: int, workers: int):
    """The EPIC-100 script's ``python main.py ...`` training command (``--tensorboard`` off)."""
    return [
        "97,300",
        "ALL",
        str(inputs.source_list),
        str(inputs.target_list),
        str(inputs.test_list),
        str(inputs.test_data),
        str(inputs.source_data),
        str(inputs.target_data),
        "--exp_path", f"{exp_path}/",
        "--train_metric", "all", "--dann_warmup", "--arch", "TBN", "--pretrained", "none",
        "--baseline_type", "video", "--frame_aggregation", "trn-m",
        "--num_segments", str(NUM_SEGMENTS), "--val_segments", str(NUM_SEGMENTS),
        "--add_fc", "1", "--fc_dim", "512", "--dropout_i", "0.5", "--dropout_v", "0.5",
        "--use_target", "uSv", "--share_params", "Y",
        "--dis_DA", "none", "--alpha", "0", "--place_dis", "N", "Y", "N",
        "--adv_DA", "RevGrad", "--beta", "0.75", "0.75", "0.5", "--place_adv", "Y", "Y", "Y",
        "--use_bn", "none", "--add_loss_DA", "attentive_entropy", "--gamma", "0.003",
        "--ens_DA", "none", "--mu", "0",
        "--use_attn", "TransAttn", "--n_attn", "1", "--use_attn_frame", "none",
        "--pred_normalize", "N", "--weighted_class_loss_DA", "N", "--weighted_class_loss", "N",
        "--gd", "20", "--lr", "3e-3", "--lr_decay", "10", "--lr_adaptive", "none",
        "--lr_steps", "10", "20", "--epochs", str(epochs), "--optimizer", "SGD",
        "--n_rnn", "1", "--rnn_cell", "LSTM", "--n_directions", "1", "--n_ts", "5",
        "-b", str(SOURCE_BATCH), str(TARGET_BATCH), str(TEST_BATCH), "-j", str(workers),
        "-ef", "1", "-pf", "50", "-sf", "50", "--copy_list", "N", "N", "--save_model",
    ]  # fmt: skip


# ---------------------------------------------------------------- the reference's input files
@dataclasses.dataclass(frozen=True)
class ReferenceInputs:
    """Feature pickles (``*_data`` without ``.pkl``, as ``main.py`` takes them) and lists."""

    directory: Path

    def __getattr__(self, name: str) -> Path:
        files = {
            "source_data": "source_train",
            "target_data": "target_train",
            "test_data": "target_test",
            "source_list": "annotations/EPIC_100_uda_source_train.pkl",
            "target_list": "annotations/EPIC_100_uda_target_train_timestamps.pkl",
            "test_list": "annotations/EPIC_100_uda_target_test_timestamps.pkl",
        }
        if name not in files:
            raise AttributeError(name)
        return self.directory / files[name]


SPLITS = (  # (data, list, domain, split, labelled list)
    ("source_data", "source_list", "source", "train", True),
    ("target_data", "target_list", "target", "train", False),
    ("test_data", "test_list", "target", "test", True),
)


def _timestamp(seconds: float) -> str:
    minutes, second = divmod(float(seconds), 60.0)
    hours, minute = divmod(int(minutes), 60)
    return f"{hours:02d}:{minute:02d}:{second:05.2f}"


def annotation_table(segments: pd.DataFrame, labelled: bool) -> pd.DataFrame:
    """An ``EPIC_100_uda_*.pkl``-like list: indexed by ``narration_id``, what TSNDataSet reads."""
    table = pd.DataFrame(
        {
            "narration_id": segments["uid"].astype(str).to_numpy(),
            "video_id": segments["video_id"].astype(str).to_numpy(),
            "start_timestamp": [_timestamp(s) for s in segments["start_sec"]],
            "stop_timestamp": [_timestamp(s) for s in segments["stop_sec"]],
        }
    )
    if labelled:
        table["verb_class"] = segments["verb_class"].astype("int64").to_numpy()
        table["noun_class"] = segments["noun_class"].astype("int64").to_numpy()
    return table.set_index("narration_id")


def prepare_reference_inputs(cache: Path, directory: Path) -> ReferenceInputs:
    """Write (once) the cache's splits as the authors' feature pickles and annotation lists."""
    from avda.cache import open_cache
    from avda.cache.interop import export_epic_pickle

    inputs = ReferenceInputs(directory)
    stamp = directory / "written.json"
    key = {"cache": str(cache.resolve()), "mtime_ns": (cache / "zarr.json").stat().st_mtime_ns}
    if stamp.exists() and json.loads(stamp.read_text()) == key:
        return inputs
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "annotations").mkdir(parents=True)
    segments = open_cache(cache).segments
    for data, listing, domain, split, labelled in SPLITS:
        began = time.perf_counter()
        rows = segments[(segments["domain"] == domain) & (segments["split"] == split)]
        annotation_table(rows, labelled).to_pickle(getattr(inputs, listing))
        pickle_path = Path(f"{getattr(inputs, data)}.pkl")
        export_epic_pickle(cache, pickle_path, domain=domain, split=split)
        print(
            f"  wrote {pickle_path.name} ({len(rows)} segments, "
            f"{pickle_path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - began:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    stamp.write_text(json.dumps(key))
    return inputs


def reference_memory_gib(inputs: ReferenceInputs) -> float:
    """The reference's peak memory, roughly: ``TSNDataSet`` keeps every feature in memory and,
    while loading a pickle, holds it twice (its three modalities and their concatenation)."""
    size = {name: Path(f"{getattr(inputs, name)}.pkl").stat().st_size for name, *_ in SPLITS}
    return (size["source_data"] + 2 * size["target_data"] + size["test_data"]) / 2**30 + 1.0


def _available_memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
    except OSError:
        return None
    return int(fields["MemAvailable"].split()[0]) / 2**20


# ----------------------------------------------------------------------- the reference's run
def _install_shims() -> None:
    """What the authors' CUDA-era code needs to run unchanged on this CPU-only PyTorch."""
    for name in ("colorama", "tensorboardX"):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)  # colours and tensorboard logging only
            stub.init = lambda **kwargs: None
            stub.Fore = stub.Back = stub.Style = types.SimpleNamespace(
                RED="", GREEN="", YELLOW="", CYAN="", BLUE="", MAGENTA="", WHITE="", RESET_ALL=""
            )
            stub.SummaryWriter = None
            sys.modules[name] = stub
    builtins.torch = torch  # models.py: `from torch.nn.init import *` used to export torch
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.utils.data.DataLoader = _ReferenceLoader


class _ReferenceLoader(torch.utils.data.DataLoader):
    """The authors' DataLoader without pinned memory; ``limit`` stops an epoch after that many
    batches, ``marks`` collects the time each batch is handed over and the epoch's end."""

    def __init__(self, *args, **kwargs):
        kwargs["pin_memory"] = False
        super().__init__(*args, **kwargs)
        self.limit: int | None = None
        self.marks: list[float] | None = None
        self.sizes: list[int] = []

    def __iter__(self):
        batches = super().__iter__()
        self.sizes = []
        while self.limit is None or len(self.sizes) < self.limit:
            try:
                batch = next(batches)
            except StopIteration:
                break
            self.sizes.append(len(batch[0]))
            if self.marks is not None:
                self.marks.append(time.perf_counter())
            yield batch
        if self.marks is not None:
            self.marks.append(time.perf_counter())


def _timed(function, seconds: list[float]):
    """``function``, appending the duration of each call to ``seconds`` (the data loading)."""

    def timed(*positional, **keywords):
        began = time.perf_counter()
        result = function(*positional, **keywords)
        seconds.append(time.perf_counter() - began)
        return result

    return timed


def _topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """``main.accuracy`` (top-k precision in %), with ``reshape`` where it calls ``view`` on a
    transposed tensor, which PyTorch >= 1.5 refuses."""
    _, predicted = output.topk(max(topk), 1, True, True)
    correct = predicted.t().eq(target.view(1, -1).expand_as(predicted.t()))
    return [correct[:k].reshape(-1).float().sum(0).mul_(100.0 / target.size(0)) for k in topk]


def epoch_counts(sizes: dict[str, int]) -> tuple[int, int, int]:
    """Iterations, source and target segments of one epoch (the same on both sides)."""
    iterations = min(
        math.ceil(sizes["source"] / SOURCE_BATCH), math.ceil(sizes["target"] / TARGET_BATCH)
    )
    return (
        iterations,
        min(sizes["source"], iterations * SOURCE_BATCH),
        min(sizes["target"], iterations * TARGET_BATCH),
    )


def run_reference(args, sizes: dict[str, int], inputs: ReferenceInputs) -> dict:
    """Train with the authors' ``main.py`` in this process (see the module docstring)."""
    _install_shims()
    reference = args.reference.resolve()
    sys.path.insert(0, str(reference))
    spec = importlib.util.spec_from_file_location("ta3n_reference_main", reference / "main.py")
    authors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(authors)  # seeds numpy and torch with 1, as the script does
    authors.gpu_count = 1
    authors.accuracy = _topk_accuracy

    loads: list[float] = []
    timed_dataset = authors.TSNDataSet = _timed(authors.TSNDataSet, loads)
    meters: list = []

    class RecordedMeter(authors.AverageMeter):
        def __init__(self):
            super().__init__()
            meters.append(self)

    authors.AverageMeter = RecordedMeter

    # the target test split as test_models.py loads it
    test_set = timed_dataset(
        f"{inputs.test_data}.pkl",
        str(inputs.test_list),
        num_dataload=sizes["test"],
        num_segments=NUM_SEGMENTS,
        new_length=1,
        modality="ALL",
        test_mode=True,
    )
    test_loader = torch.utils.data.DataLoader(
        test_set, batch_size=TEST_BATCH, shuffle=False, num_workers=args.reference_workers
    )
    iterations, source_segments, target_segments = epoch_counts(sizes)
    records: list[dict] = []
    original_train = authors.train

    def timed_train(*train_args):
        num_class, source_loader, target_loader, model, criterion = train_args[:5]
        epoch = train_args[7]
        for loader in (source_loader, target_loader):
            loader.limit = args.reference_steps
        source_loader.marks = []
        meters.clear()
        began = time.perf_counter()
        result = original_train(*train_args)
        seconds = time.perf_counter() - began
        total_loss = meters[10].avg  # train()'s 11th meter: `losses`, the total loss
        steps = min(len(source_loader.sizes), len(target_loader.sizes))
        marks = source_loader.marks
        if steps < iterations:  # --reference-steps: extrapolate the rest of the epoch
            steady = (marks[-1] - marks[1]) / (len(marks) - 2) if len(marks) > 2 else seconds
            epoch_seconds = seconds + (iterations - steps) * steady
        else:
            epoch_seconds = seconds
        with open(os.devnull, "w") as log:
            _, verb, noun = authors.validate(
                test_loader, model, criterion, num_class, epoch, log, None
            )
        records.append(
            {
                "epoch": epoch,
                "steps": steps,
                "measured_seconds": seconds,
                "measured_segments": sum(source_loader.sizes[:steps])
                + sum(target_loader.sizes[:steps]),
                "seconds": epoch_seconds,
                "loss": total_loss,
                "classification": float(result[0]),
                "verb_top1": verb,
                "noun_top1": noun,
            }
        )
        return result

    authors.train = timed_train
    torch.set_num_threads(args.threads)
    exp_path = Path(tempfile.mkdtemp(prefix="ta3n-reference-run-"))
    argv = sys.argv
    sys.argv = ["main.py", *script_arguments(inputs, exp_path, args.epochs, args.reference_workers)]
    began = time.perf_counter()
    try:
        authors.main()
    finally:
        sys.argv = argv
        shutil.rmtree(exp_path, ignore_errors=True)
    wall = time.perf_counter() - began
    partial = any(r["steps"] < iterations for r in records)
    return {
        "name": "reference (authors' main.py)",
        "iterations_per_epoch": iterations,
        "steps_per_epoch_run": records[0]["steps"] if records else 0,
        "partial_epochs": partial,
        "source_segments_per_epoch": source_segments,
        "target_segments_per_epoch": target_segments,
        "epochs": records,
        "load_seconds": sum(loads),
        "wall_seconds": wall,
        "measured_segments_per_second": sum(r["measured_segments"] for r in records)
        / sum(r["measured_seconds"] for r in records),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "workers": args.reference_workers,
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------ avda's run
def run_avda(args, sizes: dict[str, int], cache: Path) -> dict:
    """``avda.train.loop.train`` with the TA3N head's (the EPIC-100 script's) defaults."""
    from avda import runs
    from avda.train import data as data_lib
    from avda.train.loop import train

    torch.set_num_threads(args.threads)
    loads: list[float] = []
    data_lib.load_set = _timed(data_lib.load_set, loads)
    run = Path(tempfile.mkdtemp(prefix="avda-bench-run-"))
    began = time.perf_counter()
    try:
        train(
            cache=cache,
            head="ta3n",
            source=["source"],
            target=["target"],
            out=run,
            seed=0,
            overrides={
                "epochs": args.epochs,
                "eval_every": 1,
                "precision": args.precision,
                "use_bn": "none",  # the script's setting (avda's default is AdaBN)
            },
            device="cpu",
            progress=True,
        )
        wall = time.perf_counter() - began
        metrics = runs.read_metrics(run)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    iterations, source_segments, target_segments = epoch_counts(sizes)
    records = [
        {
            "epoch": r["epoch"],
            "steps": iterations,
            "seconds": r["seconds"],
            "loss": r["train/loss"],
            "classification": r["train/classification"],
            "verb_top1": 100.0 * r["target_test/verb/top1"],
            "noun_top1": 100.0 * r["target_test/noun/top1"],
        }
        for r in metrics
    ]
    return {
        "name": f"avda ({args.precision})",
        "iterations_per_epoch": iterations,
        "steps_per_epoch_run": iterations,
        "partial_epochs": False,
        "source_segments_per_epoch": source_segments,
        "target_segments_per_epoch": target_segments,
        "epochs": records,
        "load_seconds": sum(loads),
        "wall_seconds": wall,
        "measured_segments_per_second": None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- side by side
def summarise(result: dict) -> dict:
    seconds = [r["seconds"] for r in result["epochs"]]
    total = float(np.sum(seconds))
    epochs = len(seconds)
    source = result["source_segments_per_epoch"] * epochs
    both = source + result["target_segments_per_epoch"] * epochs
    return {
        "source_segments_per_second": source / total,
        "total_segments_per_second": both / total,
        "median_epoch_source_segments_per_second": result["source_segments_per_epoch"]
        / float(np.median(seconds)),
        "mean_epoch_seconds": total / epochs,
        "median_epoch_seconds": float(np.median(seconds)),
    }


def markdown(results: dict, settings: dict) -> str:
    reference, ours = results["reference"], results["avda"]
    ref_sum, our_sum = reference["summary"], ours["summary"]

    def ratio(key: str) -> str:
        return f"{our_sum[key] / ref_sum[key]:.2f}x"

    steps = ""
    if reference["partial_epochs"]:
        steps = (
            f" (reference: {reference['steps_per_epoch_run']} of "
            f"{reference['iterations_per_epoch']} iterations per epoch timed, extrapolated)"
        )
    lines = [
        f"TA3N, {settings['size']} ({settings['source']} source + {settings['target']} target "
        f"training segments, {settings['test']} target test), {settings['epochs']} epochs, "
        f"CPU, {settings['threads']} torch threads{steps}",
        "",
        f"| | {reference['name']} | {ours['name']} | avda / reference |",
        "|---|---:|---:|---:|",
        f"| source segments/s | {ref_sum['source_segments_per_second']:.1f} | "
        f"{our_sum['source_segments_per_second']:.1f} | {ratio('source_segments_per_second')} |",
        f"| source + target segments/s | {ref_sum['total_segments_per_second']:.1f} | "
        f"{our_sum['total_segments_per_second']:.1f} | {ratio('total_segments_per_second')} |",
        "| source segments/s, median epoch | "
        f"{ref_sum['median_epoch_source_segments_per_second']:.1f} | "
        f"{our_sum['median_epoch_source_segments_per_second']:.1f} | "
        f"{ratio('median_epoch_source_segments_per_second')} |",
        f"| seconds per epoch (mean) | {ref_sum['mean_epoch_seconds']:.1f} | "
        f"{our_sum['mean_epoch_seconds']:.1f} | |",
        f"| load seconds (train + test features) | {reference['load_seconds']:.1f} | "
        f"{ours['load_seconds']:.1f} | |",
        f"| wall seconds (load, train, evaluate) | {reference['wall_seconds']:.0f} | "
        f"{ours['wall_seconds']:.0f} | |",
        f"| peak RSS, main process (GiB) | {reference['peak_rss_gib']:.2f} | "
        f"{ours['peak_rss_gib']:.2f} | |",
        f"| load average (1 min) before / after | {_load(reference)} | {_load(ours)} | |",
        f"| CPU cores used: this side / other processes | {_cpu(reference)} | {_cpu(ours)} | |",
        "",
        "| epoch | loss ref | loss avda | CE ref | CE avda | verb top-1 ref | verb top-1 avda "
        "| noun top-1 ref | noun top-1 avda |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mark = "*" if reference["partial_epochs"] else ""
    for theirs, mine in zip(reference["epochs"], ours["epochs"], strict=False):
        lines.append(
            f"| {mine['epoch']} | {theirs['loss']:.3f}{mark} | {mine['loss']:.3f} | "
            f"{theirs['classification']:.3f}{mark} | {mine['classification']:.3f} | "
            f"{theirs['verb_top1']:.1f}{mark} | {mine['verb_top1']:.1f} | "
            f"{theirs['noun_top1']:.1f}{mark} | {mine['noun_top1']:.1f} |"
        )
    lines.append("")
    lines.append(
        "loss: total training loss, CE: source classification loss 0.5 (CE_verb + CE_noun), "
        "both means over the epoch; top-1 (%) on the target test split after the epoch"
        + ("; * after a partial reference epoch" if mark else "")
    )
    return "\n".join(lines)


def _load(result: dict) -> str:
    before, after = result["load_average"]
    return f"{before:.2f} / {after:.2f}"


def _cpu(result: dict) -> str:
    own, others = result["cpu_cores"]["own"], result["cpu_cores"]["others"]
    return f"{own:.2f} / {others:.2f}" if others is not None else f"{own:.2f} / ?"


def _busy_cpu_seconds() -> float | None:
    """CPU time all processes of the machine have used since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _child(side: str, argv: list[str], workdir: Path) -> dict:
    """Run one side in a fresh process; also measure how busy the machine was meanwhile."""
    out = workdir / f"{side}.json"
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--side", side]
    command += ["--result", str(out)]
    load_before, busy_before = os.getloadavg()[0], _busy_cpu_seconds()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_before = usage.ru_utime + usage.ru_stime
    began = time.perf_counter()
    # the children's own output (progress, the authors' prints) goes to stderr
    subprocess.run(command, check=True, stdout=sys.stderr)
    wall = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the side and its loader workers
    own = usage.ru_utime + usage.ru_stime - own_before
    busy = _busy_cpu_seconds()
    result = json.loads(out.read_text())
    # the load average counts the side's own threads and workers too
    result["load_average"] = [load_before, os.getloadavg()[0]]
    result["cpu_cores"] = {
        "own": own / wall,
        "others": None if busy is None else max(busy - busy_before - own, 0.0) / wall,
    }
    result["summary"] = summarise(result)
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference",
        type=Path,
        default=os.environ.get("AVDA_TA3N_REFERENCE"),
        help="checkout of jonmun/EPIC-KITCHENS-100_UDA_TA3N (default: $AVDA_TA3N_REFERENCE)",
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    parser.add_argument("--epochs", type=int, default=2, help="epochs on both sides (default 2)")
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=None,
        help="stop each reference epoch after N iterations and extrapolate (N >= 3)",
    )
    parser.add_argument(
        "--reference-workers", type=int, default=4, help="DataLoader workers (the script's -j 4)"
    )
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides"
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="avda's")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "avda-bench"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--side", choices=["avda", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference is None or not (Path(args.reference) / "main.py").exists():
        parser.error("--reference must name a checkout of the authors' code (with main.py)")
    if args.reference_steps is not None and args.reference_steps < 3:
        parser.error("--reference-steps must be at least 3 (the first iterations warm up)")
    sizes = bench_train.QUICK if args.quick else bench_train.FULL
    size = "quick" if args.quick else "full"
    cache = args.cache_dir / f"epic100-{size}.zarr"
    inputs = ReferenceInputs(args.cache_dir / f"ta3n-reference-{size}")

    if args.side == "reference":
        args.result.write_text(json.dumps(run_reference(args, sizes, inputs)))
        return {}
    if args.side == "avda":
        args.result.write_text(json.dumps(run_avda(args, sizes, cache)))
        return {}

    if not (cache / "zarr.json").exists():
        shutil.rmtree(cache, ignore_errors=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {cache} ...", file=sys.stderr, flush=True)
        bench_train.build_cache(cache, sizes)
    print(f"reference inputs in {inputs.directory} ...", file=sys.stderr, flush=True)
    prepare_reference_inputs(cache, inputs.directory)
    need, available = reference_memory_gib(inputs), _available_memory_gib()
    if available is not None and available < need:
        print(
            f"warning: the reference needs about {need:.1f} GiB of memory, {available:.1f} GiB "
            "are available",
            file=sys.stderr,
        )
    workdir = Path(tempfile.mkdtemp(prefix="avda-bench-reference-"))
    try:
        results = {side: _child(side, argv, workdir) for side in ("avda", "reference")}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    settings = {
        "size": size,
        **sizes,
        "epochs": args.epochs,
        "threads": args.threads,
        "reference_steps": args.reference_steps,
        "reference_workers": args.reference_workers,
        "cpus": os.cpu_count(),
    }
    results["settings"] = settings
    results["avda_over_reference"] = {
        key: results["avda"]["summary"][key] / results["reference"]["summary"][key]
        for key in ("source_segments_per_second", "total_segments_per_second")
    }
    print(markdown(results, settings))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
