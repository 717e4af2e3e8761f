"""Rich tables of a scan: what ``frametuner data inspect`` and the end of a scan print."""

from __future__ import annotations

from collections import Counter

from rich.console import Console

from ..console import console as whole_lines_console  # tables keep their width in logs and pipes
from rich.table import Table
from rich.text import Text

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


def conditioning_table(result: ScanResult) -> Table | None:
    """Each training video dataset's conditioning mix and the clips too short for a drawn mode,
    which train as text-to-video when it is drawn; None when every dataset is plain t2v."""
    from ..training.conditioning import fallback_counts

    rows = []
    for scan in result.datasets.values():
        config = scan.config
        mix = config.conditioning_mix
        if not config.trains or mix.probabilities["t2v"] == 1.0:
            continue
        stride = result.frame_stride
        counts = fallback_counts(mix, (1 + (s.bucket.frames - 1) // stride for s in scan.samples), stride)
        short = ", ".join(f"{count} too short for {name.replace('vc', 'vc ') + (' frames' if name != 'i2v' else '')}" for name, count in sorted(counts.items()))
        rows.append((config.id, mix.describe(), short or "none"))
    if not rows:
        return None
    table = Table(title="Conditioning mix (clips too short for a drawn mode train it as t2v)", title_justify="left")
    for name in ("dataset", "mix", "t2v fallbacks"):
        table.add_column(name)
    for row in rows:
        table.add_row(*row)
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
    (console or whole_lines_console(stderr=True)).print(skip_table(result))


def print_inspection(result: ScanResult, console: Console | None = None) -> None:
    console = console or whole_lines_console(stderr=False)
    console.print(dataset_table(result))
    console.print(bucket_table(result))
    conditioning = conditioning_table(result)
    if conditioning is not None:
        console.print(conditioning)
    if result.skipped:
        console.print(skip_table(result))
    else:
        console.print("No files skipped.")
    for line in result.warnings():
        console.print(Text.assemble(("warning: ", "yellow"), line), soft_wrap=True)  # paths unwrapped, never markup
