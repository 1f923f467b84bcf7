"""Running a study: its folder, the runs one after another (or `jobs` at a time, or each on all torchrun
processes), resume run by run, the side-by-side speed measurement, and the report at the end."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from ..analysis.benchmark import run_benchmark
from ..checkpoints import atomic_write
from ..data.sizes import height_width, hxw
from ..data.synthetic import write_dataset
from ..engine import distributed
from ..errors import TrainingDivergedError
from ..tasks.classification.task import train
from .plan import ModelFacts, Run, StudyConfig, StudyError, check_study, make_runs
from .report import StudyResult, write_report

log = logging.getLogger("mambaout")

STUDY_FILE, FINISHED_FILE, TRAIN_LOG = "study.yaml", "study_run.json", "train.log"
# what a full disk, a quota or an output folder that cannot be written look like
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def run_study(config: StudyConfig, progress: bool | None = None) -> StudyResult | None:
    """Train, measure and report every run of `config` (None on the torchrun processes other than the first)."""
    env = distributed.setup(config.options.get("device"))
    try:
        if not config.data_dir:
            config.data_dir = str(_generated_data(config, env))
        runs = make_runs(config)
        if env.enabled and config.jobs > 1:
            raise StudyError("under torchrun every run uses all processes: leave --jobs at 1")
        classes, facts = check_study(config, runs)
        if progress is None:
            progress = env.is_main and sys.stderr.isatty()
        if env.is_main:
            _claim_folder(config)
        _train_all(config, runs, env, progress)
        if not env.is_main:
            return None
        benchmark = _benchmark(config, env.device, progress)
        return _report(config, runs, facts, benchmark, classes)
    finally:
        distributed.teardown()


def _generated_data(config: StudyConfig, env: distributed.Distributed) -> Path:
    """The preset's shapes dataset in <output>/shapes, written once (by the first process)."""
    root, spec = config.root / "shapes", config.generated_data
    if env.is_main and not (root / "val").is_dir():
        log.info("study: writing the generated shapes dataset to %s", root)
        with _stopped_on_write_errors(config):
            write_dataset(root.with_name("shapes.partial"), train_per_class=spec.train_per_class,
                          val_per_class=spec.val_per_class, size=spec.size).rename(root)
    distributed.broadcast_object(None)  # the others wait until it is there
    return root


def _claim_folder(config: StudyConfig) -> None:
    """Start a study in an empty folder, or continue (--resume auto) the same study; never mix two."""
    path = config.root / STUDY_FILE
    if path.exists():
        if config.resume != "auto":
            raise StudyError(f"{config.root} holds a study already: pass --resume auto to continue it (finished "
                             "runs are kept), or choose another --output")
        earlier = yaml.safe_load(path.read_text())["plan"]
        changed = sorted(key for key, value in config.plan().items() if earlier.get(key) != value)
        if changed:
            raise StudyError(f"{path} is a study with other settings ({', '.join(changed)} differ): resume it with "
                             "its own settings, or choose another --output")
        return
    text = yaml.safe_dump({"plan": config.plan(), "preset": config.preset,
                           "comparisons": [[c.reference, *c.others] for c in config.comparisons]}, sort_keys=False)
    _write(config, path, lambda tmp: Path(tmp).write_text(text))


def finished(run: Run) -> dict[str, Any] | None:
    """The record a finished run left (status 'ok' or 'diverged'), None if it has to (continue to) train."""
    path = run.directory / FINISHED_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("options") == json.loads(json.dumps(run.options)) else None


def _train_all(config: StudyConfig, runs: list[Run], env: distributed.Distributed, progress: bool) -> None:
    pending = [run for run in runs if distributed.broadcast_object(finished(run) is None if env.is_main else None)]
    if env.is_main and len(pending) < len(runs):
        log.info("study: %d of %d runs finished earlier, %d to train", len(runs) - len(pending), len(runs),
                 len(pending))
    bar = tqdm(total=len(runs), initial=len(runs) - len(pending), desc="study", unit="run", disable=not progress)
    try:
        if config.jobs == 1:
            for run in pending:
                bar.set_postfix_str(run.name)
                log.info("study: run %d of %d: %s (log: %s)", run.index + 1, len(runs), run.name,
                         run.directory / TRAIN_LOG)
                with _stopped_on_write_errors(config, run), _log_file(run.directory / TRAIN_LOG):
                    status = _train_one(run)
                if env.is_main:
                    _mark_finished(config, run, status)
                bar.update()
        else:
            _train_in_parallel(config, pending, bar)
    finally:
        bar.close()


def _train_one(run: Run) -> dict[str, Any]:
    try:
        train(run.train_config())
    except TrainingDivergedError as e:  # one model's recipe failing is a result of the study, not its end
        log.warning("study: %s diverged: %s", run.name, e)
        return {"status": "diverged", "message": str(e)}
    return {"status": "ok"}


def _train_in_parallel(config: StudyConfig, pending: list[Run], bar: tqdm) -> None:
    """`jobs` runs at a time, each in its own process with its share of the cores; the first failure stops the
    study once the runs under way have ended (their checkpoints are kept for --resume auto)."""
    threads = max(1, torch.get_num_threads() // config.jobs)
    context = get_context("spawn")  # a fresh interpreter: no forked OpenMP or autograd state
    with ProcessPoolExecutor(max_workers=config.jobs, mp_context=context) as pool:
        futures = {pool.submit(_train_in_worker, run.options, threads, str(run.directory / TRAIN_LOG)): run
                   for run in pending}
        log.info("study: %d runs, %d at a time with %d threads each (logs: <run>/%s)", len(pending), config.jobs,
                 threads, TRAIN_LOG)
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_EXCEPTION)
            for future in done:
                run = futures[future]
                with _stopped_on_write_errors(config, run):
                    try:
                        status = future.result()
                    except BaseException:
                        for other in remaining:
                            other.cancel()
                        raise
                _mark_finished(config, run, status)
                bar.set_postfix_str(f"finished {run.name}")
                bar.update()


def _train_in_worker(options: dict[str, Any], threads: int, log_path: str) -> dict[str, Any]:
    torch.set_num_threads(threads)
    logger = logging.getLogger("mambaout")
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the parent's console shows the study's lines; each run's go to its train.log
    run = Run(0, options["model"], options["seed"], options)
    with _log_file(Path(log_path)):
        return _train_one(run)


def _mark_finished(config: StudyConfig, run: Run, status: dict[str, Any]) -> None:
    text = json.dumps({"run": run.name, **status, "options": run.options}, indent=2)
    _write(config, run.directory / FINISHED_FILE, lambda tmp: Path(tmp).write_text(text))


@contextlib.contextmanager
def _log_file(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    logger = logging.getLogger("mambaout")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _stopped_on_write_errors(config: StudyConfig, run: Run | None = None) -> Iterator[None]:
    """A full disk or an unwritable folder ends the study with what to do; finished runs stay as they are."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        done = [r.name for r in make_runs(config) if finished(r)]
        where = f" during run {run.name}" if run else ""
        raise StudyError(
            f"writing to {e.filename or config.root} failed{where}: {e.strerror}. The {len(done)} finished runs in "
            f"{config.runs_dir} are intact; free space (or make the folder writable) and continue with the same "
            "command and --resume auto"
        ) from e


def _write(config: StudyConfig, path: Path, write) -> None:
    with _stopped_on_write_errors(config):
        atomic_write(path, write)


def _benchmark(config: StudyConfig, device: torch.device, progress: bool) -> dict[str, Any]:
    """Inference images/s of every model at the study's input, side by side in one sweep (kept for a resume)."""
    out = config.root / "benchmark"
    precision = config.bench_precision or ("bf16" if device.type == "cuda" else "fp32")
    wanted = dict(batch=config.bench_batch, precision=precision, device=str(device), repeats=config.bench_repeats)
    saved = out / "results.json"
    if saved.exists():
        earlier = json.loads(saved.read_text())
        same = all(earlier["meta"].get(k) == v for k, v in wanted.items())
        measured = {(r["model"], r["height"], r["width"]) for r in earlier["results"]}
        if same and measured == {(m, *height_width(config.img_size)) for m in config.models}:
            log.info("study: inference speed measured earlier (%s)", saved)
            return earlier
    log.info("study: measuring inference images/s of %d models at %s, batch %d, %s", len(config.models),
             hxw(config.img_size), config.bench_batch, precision)
    with _stopped_on_write_errors(config):
        result = run_benchmark(config.models, [height_width(config.img_size)], batch=config.bench_batch,
                               precision=precision, device=str(device), repeats=config.bench_repeats, warmup=1,
                               out=out, progress=progress)
    return {"meta": result.meta, "results": result.rows}


def _report(config: StudyConfig, runs: list[Run], facts: dict[str, ModelFacts], benchmark: dict[str, Any],
            classes: list[str]) -> StudyResult:
    with _stopped_on_write_errors(config):
        return write_report(config, runs, facts, benchmark, classes, {r.name: finished(r) for r in runs})

