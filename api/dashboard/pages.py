"""The dashboard's pages, rendered on the server from query results (see :mod:`.html` for
why everything is escaped). A page is a function of its data and a :class:`Context`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from api.dashboard.auth import Access
from api.dashboard.chart import throughput_chart
from api.dashboard.html import Markup, el, join
from api.dashboard.queries import STATES, Row

MESSAGES = {
    "requeued": "Requeued {n} dead task(s).",
    "cancelled": "Cancelled {n} waiting task(s).",
    "ran-now": "{n} delayed task(s) made due now.",
    "logged-out": "Logged out.",
}


@dataclass(frozen=True)
class Context:
    """What every page needs besides its data."""

    base: str  # the dashboard's URL path, e.g. /dashboard or /tasks/dashboard
    access: Access
    csrf: str | None  # set only for sessions that may act
    logged_in: bool
    login_possible: bool
    message: str | None = None

    def url(self, path: str = "/", **query: Any) -> str:
        given = {name: value for name, value in query.items() if value not in (None, "")}
        return self.base + path + (("?" + urlencode(given)) if given else "")

    @property
    def can_act(self) -> bool:
        return self.access is Access.ACT and self.csrf is not None


# -- formatting -------------------------------------------------------------------------------


def age(seconds: float | None) -> str:
    """``3h 02m``, ``4m 05s``, ``12.3s``: an age read at a glance."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d {hours % 24:02d}h"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def mebibytes(size: int | None) -> str:
    """``41.2 MiB``: a worker's resident memory."""
    return "—" if size is None else f"{size / (1024 * 1024):.1f} MiB"


def when(value: datetime | None) -> Markup:
    if value is None:
        return el("span", "—", class_="muted")
    utc = value.astimezone(UTC)
    return el("time", f"{utc:%Y-%m-%d %H:%M:%S}", datetime=utc.isoformat(), title="UTC")


def first_line(text: str | None, width: int = 90) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def state_badge(state: str | None) -> Markup:
    return el("span", state or "—", class_=f"badge state-{state or 'none'}")


# -- pieces -------------------------------------------------------------------------------------


def action(
    ctx: Context,
    name: str,
    label: str,
    confirm: str | None = None,
    danger: bool = False,
    **fields: Any,
) -> Markup | None:
    """A POST form with the CSRF token; nothing when this session may not act."""
    if not ctx.can_act:
        return None
    hidden = [el("input", type="hidden", name=key, value=value) for key, value in fields.items()]
    return el(
        "form",
        el("input", type="hidden", name="csrf_token", value=ctx.csrf),
        hidden,
        el("button", label, type="submit", class_="danger" if danger else None),
        method="post",
        action=ctx.url(f"/actions/{name}"),
        class_="action",
        data_confirm=confirm,
    )


def task_actions(ctx: Context, task: Row, back: str) -> Markup:
    buttons = []
    if task["state"] == "dead":
        buttons.append(action(ctx, "requeue", "Requeue", task_id=task["id"], next=back))
    if task["state"] == "waiting":
        if task["delayed"]:
            buttons.append(action(ctx, "run-now", "Run now", task_id=task["id"], next=back))
        buttons.append(
            action(
                ctx,
                "cancel",
                "Cancel",
                confirm=f"Cancel task {task['id']}?",
                danger=True,
                task_id=task["id"],
                next=back,
            )
        )
    return join(buttons)


def table(
    headers: list[str],
    rows: list[Markup],
    empty: str,
    numeric: tuple[int, ...] = (),
    **attributes: Any,
) -> Markup:
    """A table whose ``numeric`` columns (by index) are aligned right, headers included."""
    if not rows:
        return el("p", empty, class_="empty")
    head = [
        el("th", h, class_="num" if index in numeric else None) for index, h in enumerate(headers)
    ]
    return el(
        "div",
        el("table", el("thead", el("tr", head)), el("tbody", rows), **attributes),
        class_="table-wrap",
    )


def layout(ctx: Context, title: str, content: Markup, active: str = "") -> Markup:
    links = [
        ("overview", "/", "Overview"),
        ("tasks", "/tasks", "Tasks"),
        ("recurring", "/recurring", "Recurring"),
    ]
    nav = [
        el("a", label, href=ctx.url(path), class_="active" if key == active else None)
        for key, path, label in links
    ]
    if ctx.logged_in:
        account = el(
            "form",
            el("input", type="hidden", name="csrf_token", value=ctx.csrf or ""),
            el("button", "Log out", type="submit", class_="link"),
            method="post",
            action=ctx.url("/logout"),
            class_="logout",
        )
    elif ctx.login_possible:
        account = el(
            "a", "Log in" if ctx.access is Access.NONE else "Log in to act", href=ctx.url("/login")
        )
    else:
        account = None
    mode = {Access.ACT: "full access", Access.READ: "read-only"}.get(ctx.access)
    header = el(
        "header",
        el("a", el("strong", "task-processor"), href=ctx.url("/"), class_="brand"),
        el("nav", nav),
        el(
            "span",
            el("span", mode, class_="mode", id="access-mode") if mode else None,
            account,
            class_="account",
        ),
        el(
            "span",
            el(
                "label",
                el("input", type="checkbox", id="auto-refresh", checked=True),
                " auto-refresh",
            ),
            el("span", "", id="updated", class_="muted"),
            class_="refresh",
        ),
    )
    flash = el("p", ctx.message, class_="flash", role="status") if ctx.message else None
    return Markup(
        "<!DOCTYPE html>\n"
        + el(
            "html",
            el(
                "head",
                el("meta", charset="utf-8"),
                el("meta", name="viewport", content="width=device-width, initial-scale=1"),
                el("meta", name="color-scheme", content="light dark"),
                el("title", f"{title} · task-processor"),
                el("link", rel="stylesheet", href=ctx.url("/static/dashboard.css")),
                el("script", "", src=ctx.url("/static/dashboard.js"), defer=True),
            ),
            el(
                "body",
                header,
                el("main", flash, el("h1", title), content, id="main"),
                el("footer", "Times are UTC.", class_="muted"),
            ),
            lang="en",
        )
    )


# -- pages --------------------------------------------------------------------------------------


def overview(
    ctx: Context, counts: Row, identifiers: list[Row], minutes: list[Row], processors: list[Row]
) -> Markup:
    cards = [
        ("due", "Waiting (due)", counts["due"], ctx.url("/tasks", state="waiting")),
        ("scheduled", "Scheduled later", counts["scheduled"], ctx.url("/tasks", state="waiting")),
        ("running", "Running", counts["running"], ctx.url("/tasks", state="running")),
        ("dead", "Dead", counts["dead"], ctx.url("/tasks", state="dead")),
        (
            "succeeded",
            "Succeeded, last hour",
            counts["succeeded_last_hour"],
            ctx.url("/tasks", state="succeeded"),
        ),
        (
            "cancelled",
            "Cancelled, last hour",
            counts["cancelled_last_hour"],
            ctx.url("/tasks", state="cancelled"),
        ),
    ]
    card_list = [
        el(
            "a",
            el("span", label, class_="label"),
            el("span", f"{value:,}", class_="value", id=f"count-{key}"),
            href=href,
            class_=f"card card-{key}" + (" alert" if key == "dead" and value else ""),
        )
        for key, label, value, href in cards
    ]
    oldest = counts["oldest_due_seconds"]
    card_list.append(
        el(
            "div",
            el("span", "Oldest waiting", class_="label"),
            el("span", age(oldest) if oldest else "—", class_="value", id="oldest-waiting"),
            class_="card card-oldest",
        )
    )
    per_identifier = [
        el(
            "tr",
            el(
                "td",
                el("a", row["identifier"], href=ctx.url("/tasks", identifier=row["identifier"])),
            ),
            el("td", row["due"], class_="num"),
            el("td", row["scheduled"], class_="num"),
            el("td", row["running"], class_="num"),
            el("td", row["dead"], class_="num"),
            el(
                "td",
                age(row["oldest_due_seconds"]) if row["oldest_due_seconds"] else "—",
                class_="num",
            ),
            el(
                "td",
                action(
                    ctx,
                    "requeue-identifier",
                    f"Requeue {row['dead']} dead",
                    confirm=f"Requeue every dead task of {row['identifier']}?",
                    identifier=row["identifier"],
                    next=ctx.url("/"),
                )
                if row["dead"]
                else None,
            ),
        )
        for row in identifiers
    ]
    return layout(
        ctx,
        "Overview",
        join(
            el("section", card_list, class_="cards", id="counts"),
            el(
                "section",
                el("h2", "Throughput, last hour"),
                el(
                    "p",
                    el("span", "", class_="swatch bar-succeeded"),
                    " succeeded ",
                    el("span", "", class_="swatch bar-failed"),
                    " failed (error, timeout, worker lost)",
                    class_="legend",
                ),
                throughput_chart(minutes),
                class_="panel",
            ),
            el(
                "section",
                el("h2", "Tasks by identifier"),
                table(
                    ["Identifier", "Due", "Scheduled", "Running", "Dead", "Oldest waiting", ""],
                    per_identifier,
                    "No waiting, running or dead tasks.",
                    numeric=(1, 2, 3, 4, 5),
                    id="identifiers",
                ),
                class_="panel",
            ),
            el(
                "section",
                el("h2", "Processors"),
                processor_list(ctx, processors),
                class_="panel",
                id="processors",
            ),
        ),
        active="overview",
    )


def processor_list(ctx: Context, processors: list[Row]) -> Markup:
    if not processors:
        return el("p", "No processor is running.", class_="empty alert-text")
    out = []
    for processor in processors:
        state = processor["state"] if processor["beat_fresh"] else "silent"
        workers = [
            el(
                "tr",
                el("td", worker["slot"], class_="num"),
                el("td", worker["pid"], class_="num"),
                el("td", state_badge(worker["state"])),
                el(
                    "td",
                    el(
                        "a",
                        f"#{worker['task_id']} {worker['task_identifier'] or ''}",
                        href=ctx.url(f"/tasks/{worker['task_id']}"),
                    )
                    if worker["task_id"]
                    else el("span", "—", class_="muted"),
                ),
                el("td", age(worker["beat_age_seconds"]), class_="num"),
                el("td", mebibytes(worker["rss_bytes"]), class_="num"),
                el("td", worker["kills_last_hour"], class_="num"),
                el("td", first_line(worker["last_kill"], 70), class_="error-text"),
            )
            for worker in processor["workers"]
        ]
        out.append(
            el(
                "article",
                el("h3", processor["id"], " ", state_badge(state)),
                el(
                    "p",
                    f"{processor['host']}, pid {processor['pid']}, "
                    f"{processor['num_workers']} workers, heartbeat "
                    f"{age(processor['beat_age_seconds'])} ago, started ",
                    when(processor["started_at"]),
                    class_="muted",
                ),
                table(
                    [
                        "Slot",
                        "PID",
                        "State",
                        "Current task",
                        "Heartbeat",
                        "Memory",
                        "Killed (1 h)",
                        "Last kill and why",
                    ],
                    workers,
                    "No worker has reported yet.",
                    numeric=(0, 1, 4, 5, 6),
                ),
                class_="processor",
            )
        )
    return join(out)


def task_list(
    ctx: Context,
    rows: list[Row],
    state: str | None,
    identifier: str | None,
    older: int | None,
    newer: int | None,
    known_identifiers: list[str],
    not_found: int | None = None,
) -> Markup:
    back = ctx.url("/tasks", state=state, identifier=identifier)
    filters = el(
        "form",
        el(
            "label",
            "State ",
            el(
                "select",
                el("option", "any", value=""),
                [el("option", name, value=name, selected=name == state) for name in STATES],
                name="state",
            ),
        ),
        el(
            "label",
            "Identifier ",
            el(
                "input",
                type="text",
                name="identifier",
                value=identifier or "",
                list="identifiers",
                placeholder="any",
            ),
        ),
        el("datalist", [el("option", value=name) for name in known_identifiers], id="identifiers"),
        el("button", "Filter", type="submit"),
        method="get",
        action=ctx.url("/tasks"),
        class_="filters",
    )
    lookup = el(
        "form",
        el("label", "Task id ", el("input", type="number", name="id", min="1", required=True)),
        el("button", "Open", type="submit"),
        method="get",
        action=ctx.url("/tasks/lookup"),
        class_="filters",
    )
    body = [
        el(
            "tr",
            el("td", el("a", task["id"], href=ctx.url(f"/tasks/{task['id']}")), class_="num"),
            el("td", task["identifier"], class_="identifier"),
            el(
                "td",
                state_badge(task["state"]),
                el("span", " delayed", class_="muted")
                if task["state"] == "waiting" and task["delayed"]
                else None,
            ),
            el("td", f"{task['attempts']}/{task['max_attempts']}", class_="num"),
            el("td", when(task["scheduled_for"])),
            el("td", first_line(task["last_error"]), class_="error-text"),
            el("td", task_actions(ctx, task, back), class_="actions"),
            data_task_id=task["id"],
        )
        for task in rows
    ]
    paging = el(
        "nav",
        el("a", "← newer", href=ctx.url("/tasks", state=state, identifier=identifier, after=newer))
        if newer
        else None,
        el("a", "newest", href=back) if newer else None,
        el("a", "older →", href=ctx.url("/tasks", state=state, identifier=identifier, before=older))
        if older
        else None,
        class_="paging",
    )
    missing = el("p", f"There is no task {not_found}.", class_="flash error") if not_found else None
    return layout(
        ctx,
        "Tasks",
        join(
            missing,
            el("div", filters, lookup, class_="toolbar"),
            table(
                ["ID", "Identifier", "State", "Attempts", "Scheduled for", "Last error", ""],
                body,
                "No task matches.",
                numeric=(0, 3),
                id="tasks",
            ),
            paging,
        ),
        active="tasks",
    )


def task_page(ctx: Context, task: Row) -> Markup:
    back = ctx.url(f"/tasks/{task['id']}")
    facts = [
        ("State", state_badge(task["state"])),
        ("Attempts", f"{task['attempts']} of {task['max_attempts']}"),
        ("Priority", task["priority"]),
        ("Timeout", f"{task['timeout_ms'] / 1000:g} s"),
        ("Created", when(task["created_at"])),
        ("Scheduled for", when(task["scheduled_for"])),
        ("Finished", when(task["finished_at"])),
        (
            "Lease",
            f"{task['lease_owner']} until {task['lease_expires_at']:%H:%M:%S}"
            if task["lease_owner"]
            else None,
        ),
        (
            "Recurring",
            el("span", task["recurring_identifier"], " slot ", when(task["recurring_slot"]))
            if task["recurring_identifier"]
            else None,
        ),
    ]
    runs = [
        el(
            "tr",
            el("td", run["attempt"], class_="num"),
            el("td", state_badge(run["result"])),
            el("td", when(run["started_at"])),
            el(
                "td", f"{run['seconds']:.3f} s" if run["seconds"] is not None else "—", class_="num"
            ),
            el("td", run["worker"]),
            el(
                "td",
                el("details", el("summary", first_line(run["error"])), el("pre", run["error"]))
                if run["error"]
                else None,
                class_="error-text",
            ),
        )
        for run in task["runs"]
    ]
    return layout(
        ctx,
        f"Task {task['id']}",
        join(
            el(
                "p",
                el("span", task["identifier"], class_="identifier", id="task-identifier"),
                class_="subtitle",
            ),
            el("div", task_actions(ctx, task, back), class_="toolbar"),
            el(
                "dl",
                [
                    join(el("dt", name), el("dd", value))
                    for name, value in facts
                    if value is not None
                ],
                class_="facts",
            ),
            el(
                "section",
                el("h2", "Arguments"),
                el("pre", json.dumps(task["args"], indent=2, ensure_ascii=False), id="task-args"),
                el("h2", "Keyword arguments"),
                el(
                    "pre",
                    json.dumps(task["kwargs"], indent=2, ensure_ascii=False),
                    id="task-kwargs",
                ),
                class_="panel",
            ),
            el("section", el("h2", "Last error"), el("pre", task["last_error"]), class_="panel")
            if task["last_error"]
            else None,
            el(
                "section",
                el("h2", f"Attempts ({len(task['runs'])})"),
                table(
                    ["#", "Result", "Started", "Took", "Worker", "Error"],
                    runs,
                    "No attempt recorded.",
                    numeric=(0, 3),
                    id="runs",
                ),
                class_="panel",
            ),
        ),
        active="tasks",
    )


def recurring_page(ctx: Context, rows: list[Row]) -> Markup:
    body = [
        el(
            "tr",
            el("td", row["identifier"], class_="identifier"),
            el("td", str(row["run_every"])),
            el(
                "td",
                el("a", f"#{row['last_task_id']}", href=ctx.url(f"/tasks/{row['last_task_id']}"))
                if row["last_task_id"]
                else el("span", "never", class_="muted"),
                " ",
                state_badge(row["last_state"]) if row["last_state"] else None,
            ),
            el("td", when(row["last_slot"])),
            el("td", when(row["last_finished_at"])),
            el(
                "td",
                when(row["next_run_at"]),
                el(
                    "span",
                    f" in {age(row['next_in_seconds'])}" if row["next_in_seconds"] > 0 else " due",
                    class_="muted",
                ),
            ),
            el("td", first_line(row["last_error"]), class_="error-text"),
        )
        for row in rows
    ]
    return layout(
        ctx,
        "Recurring tasks",
        table(
            [
                "Identifier",
                "Every",
                "Last run",
                "Last slot",
                "Last finished",
                "Next run",
                "Last error",
            ],
            body,
            "No recurring task is defined.",
            id="recurring",
        ),
        active="recurring",
    )


def login_page(ctx: Context, nonce: str, error: str | None = None) -> Markup:
    return layout(
        ctx,
        "Log in",
        join(
            el("p", error, class_="flash error", role="alert") if error else None,
            el(
                "form",
                el("input", type="hidden", name="login_nonce", value=nonce),
                el(
                    "label",
                    "Token ",
                    el(
                        "input",
                        type="password",
                        name="token",
                        id="token",
                        autocomplete="current-password",
                        required=True,
                        autofocus=True,
                    ),
                ),
                el("button", "Log in", type="submit", id="login"),
                method="post",
                action=ctx.url("/login"),
                class_="login",
            ),
            el(
                "p",
                "TASK_PROCESSOR_DASHBOARD_TOKEN allows actions; "
                "TASK_PROCESSOR_MONITORING_TOKEN allows reading.",
                class_="muted",
            ),
        ),
    )


def error_page(ctx: Context, title: str, text: str) -> Markup:
    return layout(ctx, title, el("p", text, class_="flash error"))
