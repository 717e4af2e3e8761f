"""Rich tables of a scan: what ``frametuner data inspect`` and the end of a scan print."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from .scan import ScanResult


def skip_table(result: ScanResult) -> Table:
    table = Table(title="Skipped files by reason", title_justify="left")
    table.add_column("dataset")
    table.add_column("reason")
    table.add_column("files", justify="right")
    for (dataset_id, reason), count in sorted(result.skip_counts().items()):
        table.add_row(dataset_id, reason, str(count))
    return table


def dataset_table(result: ScanResult) -> Table:
    table = Table(title="Datasets", title_justify="left")
    for name, justify in (("dataset", "left"), ("type", "left"), ("split", "left"), ("i2v", "left"), ("samples", "right"),
                          ("skipped", "right"), ("frames", "right"), ("seen / epoch", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for scan in result.datasets.values():
        config = scan.config
        per_epoch = round(len(scan.samples) * (1 + config.repeats) * config.probability) if config.trains else 0
        explicit = sum(1 for s in scan.samples if s.conditioning_image is not None)
        i2v = f"yes ({explicit} images, {len(scan.samples) - explicit} first frames)" if config.is_i2v else "no"
        table.add_row(
            config.id, config.dataset_type, config.split, i2v, str(len(scan.samples)),
            str(len(scan.skipped)), f"{scan.total_frames:,}", str(per_epoch),
        )
    table.add_row("total", "", "", "", str(len(result.all_samples)), str(len(result.skipped)), f"{result.total_frames:,}", "", style="bold")
    return table


def bucket_table(result: ScanResult) -> Table:
    table = Table(title="Buckets (HxW@frames)", title_justify="left")
    table.add_column("dataset")
    table.add_column("bucket")
    table.add_column("i2v")
    table.add_column("samples", justify="right")
    for scan in result.datasets.values():
        counts: Counter = Counter((s.bucket, s.is_i2v) for s in scan.samples)
        for (bucket, i2v), count in sorted(counts.items(), key=lambda item: (item[0][0].frames, item[0][0].height, item[0][0].width, item[0][1])):
            table.add_row(scan.config.id, bucket.key, "yes" if i2v else "no", str(count))
    return table


def print_skip_summary(result: ScanResult, console: Console | None = None) -> None:
    (console or Console(stderr=True)).print(skip_table(result))


def print_inspection(result: ScanResult, console: Console | None = None) -> None:
    console = console or Console()
    console.print(dataset_table(result))
    console.print(bucket_table(result))
    if result.skipped:
        console.print(skip_table(result))
    else:
        console.print("No files skipped.")
