"""``matrix.html``: the pair matrix as one self-contained page (inline CSS, no scripts, no
external assets), readable offline and attachable to an issue.

Rows are the calling side's profile, columns the called side's; each measured pair is one cell
coloured by its direct-path success rate (red 0 % .. green 100 %) showing the rate, its Wilson
95 % interval, p50/p95 time to direct, the winning strategy and the frames lost. A flat table
below repeats every figure for copying. Rendered from the ``matrix.json`` document, so a saved
matrix can be re-rendered; every text from it is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any, Final

from punchthrough.matrix.model import STRATEGY_ERROR, profiles_of, winning_strategy

#: Hue of a 100 % cell (green) in HSL; 0 % is hue 0 (red).
GREEN_HUE: Final = 120

_CSS: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
table { border-collapse: collapse; }
table.grid td, table.grid th { border: 1px solid #bbb; padding: .4em .5em; }
table.grid th { background: #f3f3f3; font-weight: 600; white-space: nowrap; }
table.grid td.cell { min-width: 9em; vertical-align: top; }
table.grid td.empty { background: #fafafa; }
.rate { font-size: 1.3em; font-weight: 700; }
.ci, .t, .s, .l { font-size: .85em; }
.s { font-weight: 600; }
.err { color: #a00; font-size: .85em; }
.legend span { display: inline-block; width: 3.2em; text-align: center; font-size: .8em; }
table.flat { margin-top: 1.5em; font-size: .9em; }
table.flat td, table.flat th { border-bottom: 1px solid #ddd; padding: .2em .6em; }
table.flat th { text-align: left; }
ul.notes { color: #555; }
"""


def rate_colour(rate: float) -> str:
    """Background for a success rate in [0, 1] (clamped): red -> amber -> green, light."""
    r = min(1.0, max(0.0, rate))
    return f"hsl({round(GREEN_HUE * r)}, 65%, 78%)"


def _pct(x: object) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, int | float) else "-"


def _ms(x: object) -> str:
    return f"{x:g} ms" if isinstance(x, int | float) else "-"


def _strategies(cell: Mapping[str, Any]) -> dict[str, int]:
    raw = cell.get("strategies")
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}


def _strategy_text(strategies: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in strategies.items())


def _cell_html(cell: Mapping[str, Any]) -> str:
    a, b = str(cell.get("a")), str(cell.get("b"))
    trials, direct = cell.get("trials", 0), cell.get("direct", 0)
    rate = cell.get("success_rate")
    rate_f = float(rate) if isinstance(rate, int | float) else 0.0
    ci = cell.get("ci95") or [None, None]
    lo, hi = (ci[0], ci[1]) if isinstance(ci, Sequence) and len(ci) == 2 else (None, None)
    strategies = _strategies(cell)
    best = winning_strategy(strategies) or "-"
    errors = strategies.get(STRATEGY_ERROR, 0)
    title = f"{a} calls {b}: {_strategy_text(strategies)}"
    parts = [
        f'<td class="cell" data-a="{escape(a)}" data-b="{escape(b)}" '
        f'style="background:{rate_colour(rate_f)}" title="{escape(title)}">',
        f'<div class="rate">{_pct(rate)}</div>',
        f'<div class="ci">{escape(str(direct))}/{escape(str(trials))} direct; '
        f"95% CI {_pct(lo)}&ndash;{_pct(hi)}</div>",
        f'<div class="t">to direct: p50 {_ms(cell.get("p50_direct_ms"))}, '
        f"p95 {_ms(cell.get('p95_direct_ms'))}</div>",
        f'<div class="s">{escape(best)}</div>',
        f'<div class="l">{escape(str(cell.get("frames_lost", "-")))} frames lost</div>',
    ]
    if errors:
        parts.append(f'<div class="err">{errors} trial(s) failed</div>')
    parts.append("</td>")
    return "".join(parts)


def _flat_row(cell: Mapping[str, Any]) -> str:
    ci = cell.get("ci95") or [None, None]
    lo, hi = (ci[0], ci[1]) if isinstance(ci, Sequence) and len(ci) == 2 else (None, None)
    cols = [
        str(cell.get("a")),
        str(cell.get("b")),
        str(cell.get("trials")),
        str(cell.get("direct")),
        _pct(cell.get("success_rate")),
        f"{_pct(lo)}-{_pct(hi)}",
        _ms(cell.get("p50_direct_ms")),
        _ms(cell.get("p95_direct_ms")),
        _strategy_text(_strategies(cell)),
        str(cell.get("frames_lost")),
    ]
    return "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cols) + "</tr>"


def render_html(
    matrix: Mapping[str, Any],
    *,
    notes: Sequence[str] = (),
    order: Sequence[str] = (),
    title: str = "punchthrough: NAT pair matrix",
) -> str:
    """The page for a ``matrix.json`` document. ``order``: profile order for rows/columns
    (profiles not in it follow in order of appearance)."""
    cells = [c for c in matrix.get("cells", []) if isinstance(c, Mapping)]
    by_pair = {(str(c.get("a")), str(c.get("b"))): c for c in cells}
    profiles = profiles_of(list(by_pair), order)
    rtt = matrix.get("rtt_ms")
    rtt_text = f"direct-path RTT {rtt:g} ms" if isinstance(rtt, int | float) else "no RTT applied"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>backend <b>{escape(str(matrix.get('backend')))}</b>, "
        f"{escape(str(matrix.get('trials')))} trials per cell, {escape(rtt_text)}, "
        f"{len(cells)} cells. Rows: the calling peer's NAT; columns: the called peer's. "
        "Colour and headline: share of trials that ended on a direct path.</p>",
    ]
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes))
        out.append("</ul>")
    out.append('<p class="legend">')
    out.extend(f'<span style="background:{rate_colour(r / 4)}">{25 * r}%</span>' for r in range(5))
    out.append("</p>")
    out.append('<table class="grid"><thead><tr><th>caller \\ callee</th>')
    out.extend(f'<th scope="col">{escape(p)}</th>' for p in profiles)
    out.append("</tr></thead><tbody>")
    for a in profiles:
        out.append(f'<tr><th scope="row">{escape(a)}</th>')
        for b in profiles:
            cell = by_pair.get((a, b))
            out.append(_cell_html(cell) if cell is not None else '<td class="empty"></td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    heads = (
        "a",
        "b",
        "trials",
        "direct",
        "rate",
        "95% CI",
        "p50 to direct",
        "p95 to direct",
        "strategies",
        "frames lost",
    )
    out.append('<table class="flat"><thead><tr>')
    out.extend(f"<th>{h}</th>" for h in heads)
    out.append("</tr></thead><tbody>")
    out.extend(_flat_row(c) for c in cells)
    out.append("</tbody></table></body></html>")
    return "\n".join(out) + "\n"
