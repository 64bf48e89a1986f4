"""The overview's charts as inline SVG, drawn on the server: no script, nothing from another host.

Pure functions from numbers to markup. Colours come from classes in the style sheet
(`s-<series>`); every bar has a <title>, which browsers show on hover. Any text put in is
escaped.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 180
LEFT = 52  # room for the y-axis labels
BOTTOM = 22  # room for the x-axis labels
TOP = 8


def _nice_max(value: float) -> float:
    """A round number at or above `value` for the top of the y axis."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** len(str(int(value))) / 10
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(value)


def _axis_number(value: float) -> str:
    """Short: 2.5, 40, 1,200, 25k, 1.5M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:,.1f}"


def _label(epoch: int, fmt: str) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(fmt)


def _frame(title: str, top: float, body: list[str], x_labels: list[str]) -> Markup:
    plot_h = HEIGHT - BOTTOM - TOP
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        shown = _axis_number(top * fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{shown}</text>'
        )
    parts += body
    parts += x_labels
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bars(
    title: str,
    starts: Sequence[int],
    values: Sequence[dict[str, int]],
    series: Sequence[str],
    *,
    label_format: str = "%H:%M",
    label_every: int = 4,
    limit: float | None = None,
    limit_label: str = "",
    unit: str = "",
) -> Markup:
    """One stacked bar per bucket (`values[i]` counts per series), oldest on the left; an
    optional horizontal line (`limit`, e.g. the rate limit)."""
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    totals = [sum(v.get(s, 0) for s in series) for v in values]
    # A limit far above the data would flatten every bar: then it is named, not drawn.
    limit_drawn = limit is not None and limit <= 4 * max([*totals, 1])
    top = _nice_max(max([*totals, limit if limit_drawn and limit else 0, 1]) * 1.05)
    slot = plot_w / max(1, len(starts))
    bar_w = max(1.0, slot * 0.8)
    body: list[str] = []
    labels: list[str] = []
    for i, (start, counts) in enumerate(zip(starts, values, strict=True)):
        x = LEFT + i * slot + (slot - bar_w) / 2
        y = float(TOP + plot_h)
        for name in series:
            count = counts.get(name, 0)
            if not count:
                continue
            h = plot_h * count / top
            y -= h
            tip = f"{_label(start, label_format)} {name}: {count:,}{unit}"
            body.append(
                f'<rect class="s-{escape(name)}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}"><title>{escape(tip)}</title></rect>'
            )
        if i % label_every == 0:
            labels.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                f"{escape(_label(start, label_format))}</text>"
            )
    if limit is not None and not limit_drawn:
        body.append(
            f'<text class="limit-label" x="{WIDTH - 4}" y="{TOP + 12}" text-anchor="end">'
            f"{escape(limit_label)}: far above these bars</text>"
        )
    elif limit is not None:
        limit_y = TOP + plot_h * (1 - limit / top)
        body.append(
            f'<line class="limit" x1="{LEFT}" x2="{WIDTH}" y1="{limit_y:.1f}" y2="{limit_y:.1f}"/>'
        )
        body.append(
            f'<text class="limit-label" x="{WIDTH - 4}" y="{limit_y - 4:.1f}" text-anchor="end">'
            f"{escape(limit_label)}</text>"
        )
    return _frame(title, top, body, labels)


def lines(
    title: str,
    starts: Sequence[int],
    values: Sequence[dict[str, float | None]],
    series: Sequence[str],
    *,
    label_format: str = "%H:%M",
    label_every: int = 2,
    unit: str = "",
) -> Markup:
    """One line per series over the buckets; a bucket without a value breaks the line."""
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    highest = max([v for row in values for v in row.values() if v is not None] or [1.0])
    top = _nice_max(highest * 1.05)
    slot = plot_w / max(1, len(starts))
    body: list[str] = []
    for name in series:
        run: list[str] = []
        for i, row in enumerate(values):
            value = row.get(name)
            x = LEFT + i * slot + slot / 2
            if value is None:
                if run:
                    body.append(_polyline(name, run))
                run = []
                continue
            y = TOP + plot_h * (1 - value / top)
            run.append(f"{x:.1f},{y:.1f}")
            tip = f"{_label(starts[i], label_format)} {name}: {value:,.0f}{unit}"
            body.append(
                f'<circle class="s-{escape(name)}" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                f"<title>{escape(tip)}</title></circle>"
            )
        if run:
            body.append(_polyline(name, run))
    labels = [
        f'<text class="axis" x="{LEFT + i * slot + slot / 2:.1f}" y="{HEIGHT - 6}" '
        f'text-anchor="middle">{escape(_label(start, label_format))}</text>'
        for i, start in enumerate(starts)
        if i % label_every == 0
    ]
    return _frame(title, top, body, labels)


def _polyline(name: str, points: list[str]) -> str:
    return f'<polyline class="line s-{escape(name)}" points="{" ".join(points)}"/>'
