"""``frametuner caption``: caption every clip and image that has no caption yet.

One pass over the files (``files.find_media``); those with a caption are skipped, the rest
are decoded (in a background thread, one batch ahead of the model), captioned in batches
and each caption is written the moment its batch finishes. A killed run therefore lost at
most the batch in flight, and running the same command again continues where it stopped:
what has a caption is skipped. A file that fails (does not decode, the model answers
nothing, a batch runs out of memory twice) is reported with its reason and the run goes
on; a failed batch is retried one file at a time so one bad file fails alone.
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from ..data.media import DecodeError
from . import DEFAULT_MODEL
from .files import Ignored, MediaFile, find_media, has_caption, write_caption
from .frames import Media
from .prompts import finish_caption, instructions

log = logging.getLogger("frametuner.caption")


class Captioner(Protocol):
    name: str

    def load(self, path: Path, kind: str) -> Media: ...

    def caption(self, batch: Sequence[Media], instructions: Sequence[str]) -> list[str]: ...


@dataclass
class CaptionOptions:
    paths: list[str]
    model: str = DEFAULT_MODEL
    batch_size: int = 1
    frames: int | None = None
    prompt: str | None = None
    prompt_file: str | None = None
    prefix: str = ""
    overwrite: bool = False
    dry_run: bool = False
    review: str | None = None
    max_new_tokens: int | None = None
    quantize: str = "none"
    dtype: str = "auto"
    device: str | None = None


@dataclass
class CaptionReport:
    captioned: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # had a caption
    failed: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    pending: list[Path] = field(default_factory=list)  # dry run: what would be captioned
    captions: dict[Path, str] = field(default_factory=dict)  # written this run
    dry_run: bool = False
    interrupted: bool = False
    seconds: float = 0.0  # the whole run
    load_seconds: float = 0.0  # of which loading the model


def load_captioner(options: CaptionOptions) -> Captioner:
    """The model named by ``--model``: ``tiny`` (built locally), a Hub id or a local folder."""
    from .qwen_vl import load_qwen_vl

    model = options.model
    if model == "tiny":
        from .tiny import ensure_tiny_captioner

        model = str(ensure_tiny_captioner())
    return load_qwen_vl(model, device=options.device, dtype=options.dtype, quantise=options.quantize,
                        max_new_tokens=options.max_new_tokens, frames=options.frames)


def _batches(items: list[MediaFile], size: int) -> Iterator[list[MediaFile]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _decode(captioner: Captioner, item: MediaFile) -> Media | str:
    """The decoded file, or the reason it cannot be used."""
    try:
        return captioner.load(item.path, item.kind)
    except DecodeError as error:
        return f"{error.reason}" + (f" ({error.detail})" if error.detail else "")
    except Exception as error:  # noqa: BLE001 - one bad file never stops the run
        return f"unexpected_error ({type(error).__name__}: {error})"


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if "out of memory" in text.lower():
        return "out_of_memory (lower --batch_size or --frames, or --quantize int8)"
    return f"model_error ({type(error).__name__}: {text[:200]})"


class _Progress:
    """A rich progress bar (clips, clips/s, ETA) on a terminal; a log line per batch otherwise
    (a server job's log)."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("captioning"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} clips/s"), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("caption", total=total, rate="-")
            self.bar.start()

    def advance(self, count: int, last: Path | None = None) -> None:
        self.done += count
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(self.task, advance=count, rate=f"{rate:.2f}")
        else:
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            log.info("caption: %d/%d clips, %.2f clips/s, ETA %s%s", self.done, self.total, rate,
                     "?" if eta != eta else f"{eta:.0f} s", f" ({last.name})" if last else "")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_caption(options: CaptionOptions, captioner: Captioner | None = None) -> CaptionReport:
    """Caption what lacks a caption under ``options.paths``; see the module docstring."""
    started = time.perf_counter()
    report = CaptionReport()
    media, report.ignored = find_media(options.paths)
    todo: list[MediaFile] = []
    for item in media:
        if not options.overwrite and has_caption(item.path):
            report.skipped.append(item.path)
        else:
            todo.append(item)
    if options.dry_run:
        report.dry_run = True
        report.pending = [item.path for item in todo]
        if options.review:
            from .review import write_review

            write_review(options.review, media, report)
        return report
    prompts = instructions(options.prompt, options.prompt_file)
    if todo:
        if captioner is None:
            loading = time.perf_counter()
            captioner = load_captioner(options)
            report.load_seconds = time.perf_counter() - loading
        batch_size = max(1, options.batch_size)
        progress = _Progress(len(todo))
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="caption-decode")
        try:
            batches = list(_batches(todo, batch_size))
            ahead: list[Future] = [pool.submit(_decode, captioner, item) for item in batches[0]]
            for number, batch in enumerate(batches):
                decoded = [future.result() for future in ahead]
                if number + 1 < len(batches):  # decode the next batch while the model works on this one
                    ahead = [pool.submit(_decode, captioner, item) for item in batches[number + 1]]
                ready = []
                for item, result in zip(batch, decoded):
                    if isinstance(result, str):
                        report.failed.append((item.path, result))
                    else:
                        ready.append((item, result))
                _caption_batch(captioner, ready, prompts, options, report)
                progress.advance(len(batch), batch[-1].path)
        except KeyboardInterrupt:  # Ctrl-C: what is written stays; the report says how far it got
            report.interrupted = True
        finally:
            progress.stop()
            pool.shutdown(wait=True, cancel_futures=True)
    report.seconds = time.perf_counter() - started
    if options.review:
        from .review import write_review

        write_review(options.review, media, report)
    return report


def _caption_batch(captioner: Captioner, ready: list[tuple[MediaFile, Media]], prompts: dict[str, str],
                   options: CaptionOptions, report: CaptionReport) -> None:
    if not ready:
        return
    try:
        answers = captioner.caption([media for _, media in ready], [prompts[media.kind] for _, media in ready])
    except Exception as error:  # noqa: BLE001 - a failed batch is retried file by file
        if len(ready) > 1:
            log.warning("caption: a batch of %d failed (%s); captioning its files one at a time", len(ready), _describe(error))
            for one in ready:
                _caption_batch(captioner, [one], prompts, options, report)
            return
        report.failed.append((ready[0][0].path, _describe(error)))
        return
    for (item, _), answer in zip(ready, answers):
        text = finish_caption(answer, options.prefix)
        if not text:
            report.failed.append((item.path, "empty_caption (the model answered nothing; nothing written, a rerun retries it)"))
            continue
        try:
            written = write_caption(item.path, text, overwrite=options.overwrite)
        except OSError as error:
            report.failed.append((item.path, f"write_error ({error.strerror or error})"))
            continue
        if written:
            report.captioned.append(item.path)
            report.captions[item.path] = text
        else:
            report.skipped.append(item.path)  # a caption appeared meanwhile: kept


def print_report(report: CaptionReport, *, file=None) -> None:
    """The final table: captioned, skipped (had one), failed with the reason per file."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, soft_wrap=True)
    for path in report.pending:
        console.print(f"would caption {path}", markup=False, highlight=False)
    table = Table(title="frametuner caption" + (" (dry run)" if report.dry_run else ""))
    table.add_column("result")
    table.add_column("files", justify="right")
    if report.dry_run:
        table.add_row("would caption", str(len(report.pending)))
    else:
        table.add_row("captioned", str(len(report.captioned)))
    table.add_row("skipped (had one)", str(len(report.skipped)))
    table.add_row("failed", str(len(report.failed)))
    if report.ignored:
        table.add_row("left out", str(len(report.ignored)))
    console.print(table)
    for path, reason in report.failed:
        console.print(f"failed {path}: {reason}", markup=False, highlight=False)
    for item in report.ignored:
        console.print(f"left out {item.path}: {item.reason}", markup=False, highlight=False)
    working = report.seconds - report.load_seconds
    if report.captioned and working > 0:
        loaded = f"; the model loaded in {report.load_seconds:.1f} s" if report.load_seconds else ""
        console.print(f"{len(report.captioned)} captions in {working:.1f} s ({len(report.captioned) / working:.2f} clips/s{loaded})",
                      markup=False, highlight=False)
    if report.interrupted:
        console.print("interrupted: run the same command again to caption the rest", markup=False, highlight=False)
