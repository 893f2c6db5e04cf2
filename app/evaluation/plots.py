"""PNG plots of an evaluation: the confusion matrix, per-label F1 and per-row scores.

Chinese labels need a CJK font, because matplotlib's bundled DejaVu Sans has no Han glyphs
and draws them as empty boxes. `cjk_font_name` looks for one (Noto Sans CJK, from the Debian
package fonts-noto-cjk, comes first) and the plots fall back to DejaVu Sans for Latin text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from matplotlib import font_manager, rc_context
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

# Font families with Han glyphs, best first; any other family with "CJK" in its name also fits.
PREFERRED_CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
)


@lru_cache(maxsize=1)
def cjk_font_name() -> str | None:
    """Return the name of an installed font family with CJK glyphs, or None."""
    name = _find_cjk_font()
    if name is not None:
        return name

    # matplotlib caches its font list, so a font installed after the cache was built is
    # missing from it. Register system font files whose names look like CJK fonts and retry.
    for path in font_manager.findSystemFonts():
        lowered = Path(path).name.lower()
        if "cjk" in lowered or "wqy" in lowered or "simhei" in lowered:
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError) as error:
                logger.debug("could not register font %s: %s", path, error)
    name = _find_cjk_font()
    if name is None:
        logger.warning(
            "no CJK font found, so Chinese text in plots renders as boxes; "
            "install one, such as the Debian package fonts-noto-cjk"
        )
    return name


def _find_cjk_font() -> str | None:
    available = {entry.name for entry in font_manager.fontManager.ttflist}
    for name in PREFERRED_CJK_FONTS:
        if name in available:
            return name
    others = sorted(name for name in available if "CJK" in name)
    return others[0] if others else None


def _font_families() -> list[str]:
    cjk = cjk_font_name()
    return [cjk, "DejaVu Sans"] if cjk else ["DejaVu Sans"]


def _new_figure(width: float, height: float) -> Figure:
    # A Figure without pyplot needs no GUI backend and keeps no global state.
    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str
) -> Path:
    """Draw a confusion matrix (rows: gold labels, columns: predictions) as a PNG."""
    size = max(4.0, 1.0 + 0.8 * len(labels))
    with rc_context({"font.family": _font_families()}):
        figure = _new_figure(size + 1.0, size)
        axes = figure.add_subplot()
        image = axes.imshow(matrix, cmap="Blues")
        figure.colorbar(image, ax=axes, shrink=0.8)

        axes.set_xticks(range(len(labels)), labels=list(labels), rotation=45, ha="right")
        axes.set_yticks(range(len(labels)), labels=list(labels))
        axes.set_xlabel("predicted label")
        axes.set_ylabel("gold label")
        axes.set_title(title)

        highest = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                color = "white" if highest and count > highest / 2 else "black"
                axes.text(j, i, str(count), ha="center", va="center", color=color)
        figure.savefig(path)
    return path


def plot_per_label_f1(per_label: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Draw a horizontal bar chart of F1 per label as a PNG."""
    labels = list(per_label)
    with rc_context({"font.family": _font_families()}):
        figure = _new_figure(6.0, max(2.5, 0.5 * len(labels) + 1.0))
        axes = figure.add_subplot()
        axes.barh(labels, [per_label[label]["f1"] for label in labels], color="tab:blue")
        axes.invert_yaxis()
        axes.set_xlim(0, 1)
        axes.set_xlabel("F1")
        axes.set_title(title)
        figure.savefig(path)
    return path


def plot_score_histogram(
    scores: Sequence[float], path: Path, title: str, xlabel: str, upper: float
) -> Path:
    """Draw a histogram of per-row scores between 0 and `upper` as a PNG."""
    with rc_context({"font.family": _font_families()}):
        figure = _new_figure(6.0, 3.5)
        axes = figure.add_subplot()
        axes.hist(list(scores), bins=10, range=(0, upper), color="tab:blue", edgecolor="white")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("rows")
        axes.set_title(title)
        figure.savefig(path)
    return path
