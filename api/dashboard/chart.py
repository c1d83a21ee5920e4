"""The throughput chart: attempts per minute over the last hour, as inline SVG drawn here.

No script and no library: the server draws the bars, the stylesheet colours them (so the chart
follows the light or dark theme), and each bar carries a ``<title>`` that browsers show on hover.
"""

from __future__ import annotations

from api.dashboard.html import Markup, el, join

WIDTH, HEIGHT = 720, 180
LEFT, BOTTOM, TOP = 40, 20, 10


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _bar(x: float, width: float, base: float, height: float, css_class: str) -> Markup:
    """One rectangle of a stacked bar, standing on ``base`` (SVG's y grows downwards)."""
    return el(
        "rect",
        x=f"{x:.1f}",
        y=f"{base - height:.1f}",
        width=f"{width:.1f}",
        height=f"{height:.1f}",
        class_=css_class,
    )


def throughput_chart(minutes: list[dict]) -> Markup:
    """Stacked bars, succeeded under failed, one per minute, oldest on the left."""
    peak = _nice_ceiling(max((m["succeeded"] + m["failed"] for m in minutes), default=0))
    plot_height = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / max(len(minutes), 1)
    bars = []
    for index, minute in enumerate(minutes):
        x = LEFT + index * slot + 1
        succeeded_height = plot_height * minute["succeeded"] / peak
        failed_height = plot_height * minute["failed"] / peak
        label = (
            f"{minute['minutes_ago']} min ago: {minute['succeeded']} succeeded, "
            f"{minute['failed']} failed"
        )
        bars.append(
            el(
                "g",
                el("title", label),
                _bar(x, slot - 2, HEIGHT - BOTTOM, succeeded_height, "bar-succeeded"),
                _bar(x, slot - 2, HEIGHT - BOTTOM - succeeded_height, failed_height, "bar-failed"),
                class_="minute",
            )
        )
    axis = [
        el("line", x1=LEFT, y1=HEIGHT - BOTTOM, x2=WIDTH, y2=HEIGHT - BOTTOM, class_="axis"),
        el("line", x1=LEFT, y1=TOP, x2=WIDTH, y2=TOP, class_="grid"),
        el("text", peak, x=LEFT - 6, y=TOP + 4, class_="tick", text_anchor="end"),
        el("text", 0, x=LEFT - 6, y=HEIGHT - BOTTOM + 4, class_="tick", text_anchor="end"),
        el("text", "60 min ago", x=LEFT, y=HEIGHT - 4, class_="tick"),
        el("text", "now", x=WIDTH, y=HEIGHT - 4, class_="tick", text_anchor="end"),
    ]
    total_succeeded = sum(m["succeeded"] for m in minutes)
    total_failed = sum(m["failed"] for m in minutes)
    summary = (
        f"Attempts per minute over the last hour: {total_succeeded} succeeded, "
        f"{total_failed} failed"
    )
    return el(
        "svg",
        el("title", summary),
        join(axis),
        join(bars),
        viewBox=f"0 0 {WIDTH} {HEIGHT}",
        role="img",
        class_="chart",
        id="throughput-chart",
        aria_label=summary,
    )
