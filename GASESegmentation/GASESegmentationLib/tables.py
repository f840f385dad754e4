"""Numbers next to the images: per-structure reliability table and the per-slice confidence plot.

Both are module-owned MRML nodes (table, plot series, plot chart) tagged like the other outputs
(:mod:`.results`), so re-runs update them and the user's own tables are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import vtk

import slicer
from gase.labels import LabelInfo
from gase.result import quality_score
from gase.volume import Volume

from .results import owned_node

ROLE_RELIABILITY = "reliability"
ROLE_SLICE_TABLE = "slice-confidence"
ROLE_SLICE_CHART = "slice-chart"
ROLE_SLICE_SERIES_MEAN = "slice-series-mean"
ROLE_SLICE_SERIES_LOW = "slice-series-low"

RELIABILITY_COLUMNS = ("Structure", "Quality", "Expected Dice", "Mean confidence", "Volume (mL)",
                       "Below threshold (%)", "Removed parts (mL)", "Stability")
SLICE_COLUMNS = ("Slice", "Mean confidence", "Fraction below threshold")


ALL_STRUCTURES = "All structures"


def _number(v) -> float:
    return float("nan") if v is None else float(v)


def model_numbers(table_node) -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, float]]:
    """(expected Dice, mean confidence, removed mL, stability) per row name, read back from a reliability
    table node: the model's own numbers, kept when the table is rebuilt for a new threshold or edited
    segments."""
    dice, conf, removed, stability = {}, {}, {}, {}
    if table_node is None:
        return dice, conf, removed, stability
    t = table_node.GetTable()
    col = {t.GetColumnName(c): c for c in range(t.GetNumberOfColumns())}
    dice_col, conf_col, removed_col, stab_col = "Expected Dice", "Mean confidence", "Removed parts (mL)", "Stability"
    for r in range(t.GetNumberOfRows()):
        name = t.GetValue(r, 0).ToString()
        if dice_col in col:
            dice[name] = t.GetValue(r, col[dice_col]).ToDouble()
        if conf_col in col and name != ALL_STRUCTURES:
            conf[name] = t.GetValue(r, col[conf_col]).ToDouble()
        if removed_col in col and name != ALL_STRUCTURES:
            removed[name] = t.GetValue(r, col[removed_col]).ToDouble()
        if stab_col in col:
            stability[name] = t.GetValue(r, col[stab_col]).ToDouble()
    return dice, conf, removed, stability


@dataclass(frozen=True)
class ReliabilityRow:
    structure: str
    expected_dice: float    # the model's own estimate of the structure's Dice; NaN if unknown
    reliability: float      # mean confidence in the structure (the paper's mask reliability); NaN if absent
    volume_ml: float
    below_percent: float    # % of the structure's voxels with confidence below the threshold; NaN if absent
    removed_ml: float = float("nan")  # volume the post-processing moved to background (parts apart from the
                                      # structure's largest one, or hanging on it by a neck); NaN where the
                                      # model does not post-process it
    stability: float = float("nan")   # how much of the mask survives small contrast and size changes (Dice
                                      # against re-segmented views, gase.predictor.Predictor.stability)

    @property
    def quality(self) -> float:
        """The number to rank by (gase.result.quality_score): mean of the expected Dice and the stability."""
        return quality_score(self.expected_dice, self.stability)


def reliability_rows(labels: Volume, confidence: Volume, label_table: Sequence[LabelInfo],
                     threshold: float, reliability: dict[str, float] | None = None,
                     expected_dice: dict[str, float] | None = None,
                     removed_ml: dict[str, float] | None = None,
                     stability: dict[str, float] | None = None) -> list[ReliabilityRow]:
    """One row per structure and a last "All structures" row.

    ``reliability`` (the model's own per-label mean confidence, when known) is used as is; otherwise the
    mean confidence over the structure's voxels is computed. ``expected_dice`` (per label name, and
    "All structures") only comes from the model: it needs the softmax probabilities; NaN where unknown.
    ``removed_ml`` (per label name) is what the model's post-processing removed; NaN where not given.
    ``stability`` (per label name, and "All structures") also only comes from the model.
    """
    expected_dice = expected_dice or {}
    stability = stability or {}
    removed_ml = {k: float(v) for k, v in (removed_ml or {}).items() if v is not None and np.isfinite(v)}
    lab = labels.array.ravel()
    conf = confidence.array.ravel().astype(np.float64)
    n = max([t.value for t in label_table] + [int(lab.max(initial=0))]) + 1
    counts = np.bincount(lab, minlength=n)
    sums = np.bincount(lab, weights=conf, minlength=n)
    below = np.bincount(lab[conf < threshold], minlength=n)
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    rows = []
    for t in label_table:
        c = counts[t.value]
        mean = float(sums[t.value] / c) if c else float("nan")
        given = None if reliability is None else reliability.get(t.name)
        rel = float(given) if given is not None else mean
        rows.append(ReliabilityRow(t.name, _number(expected_dice.get(t.name)), rel, c * voxel_ml,
                                   100.0 * below[t.value] / c if c else float("nan"),
                                   _number(removed_ml.get(t.name)), _number(stability.get(t.name))))
    values = [t.value for t in label_table]
    c_all = counts[values].sum()
    mean_all = float(sums[values].sum() / c_all) if c_all else float("nan")
    rows.append(ReliabilityRow(ALL_STRUCTURES, _number(expected_dice.get(ALL_STRUCTURES)), mean_all, c_all * voxel_ml,
                               100.0 * below[values].sum() / c_all if c_all else float("nan"),
                               sum(removed_ml.values()) if removed_ml else float("nan"),
                               _number(stability.get(ALL_STRUCTURES))))
    return rows


def update_reliability_table(input_node, rows: Sequence[ReliabilityRow]):
    """Create or update the module's reliability table for ``input_node``; returns the table node."""
    scene = input_node.GetScene()
    node = owned_node(scene, "vtkMRMLTableNode", ROLE_RELIABILITY, input_node,
                      f"{input_node.GetName()} GASE reliability")
    table = vtk.vtkTable()
    names = vtk.vtkStringArray()
    names.SetName(RELIABILITY_COLUMNS[0])
    table.AddColumn(names)
    numbers = []
    for title in RELIABILITY_COLUMNS[1:]:
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        table.AddColumn(column)
        numbers.append(column)
    for row in rows:
        names.InsertNextValue(row.structure)
        for column, value in zip(numbers, (row.quality, row.expected_dice, row.reliability, row.volume_ml,
                                           row.below_percent, row.removed_ml, row.stability)):
            column.InsertNextValue(round(float(value), 3) if np.isfinite(value) else float("nan"))
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True)
    node.SetLocked(True)  # computed output: editing a cell would not change the segmentation
    return node


@dataclass
class SlicePlot:
    table: object
    chart: object


def update_slice_plot(input_node, mean_confidence: np.ndarray, fraction_below: np.ndarray, plane: str,
                      threshold: float) -> SlicePlot:
    """Per-slice confidence of the structures along the model's slice axis, as a plot chart.

    Only slices that contain a structure get a row; the "Slice" column holds the canonical slice index
    that :func:`.views.jump_to_slice` takes.
    """
    scene = input_node.GetScene()
    base = input_node.GetName()
    table_node = owned_node(scene, "vtkMRMLTableNode", ROLE_SLICE_TABLE, input_node,
                            f"{base} GASE slice confidence")
    table = vtk.vtkTable()
    columns = []
    for title in SLICE_COLUMNS:
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        table.AddColumn(column)
        columns.append(column)
    for s, (m, f) in enumerate(zip(mean_confidence, fraction_below)):
        if np.isfinite(m):
            for column, value in zip(columns, (s, m, f)):
                column.InsertNextValue(float(value))
    table_node.SetAndObserveTable(table)
    table_node.SetLocked(True)

    series = []
    for role, column, name, color in (
            (ROLE_SLICE_SERIES_MEAN, SLICE_COLUMNS[1], "mean confidence", (0.10, 0.45, 0.85)),
            (ROLE_SLICE_SERIES_LOW, SLICE_COLUMNS[2], f"fraction below {threshold:.2f}", (0.85, 0.20, 0.12))):
        node = owned_node(scene, "vtkMRMLPlotSeriesNode", role, input_node, f"{base} GASE {name}")
        node.SetName(f"{base} GASE {name}")
        node.SetAndObserveTableNodeID(table_node.GetID())
        node.SetXColumnName(SLICE_COLUMNS[0])
        node.SetYColumnName(column)
        node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        node.SetMarkerSize(5)
        node.SetColor(*color)
        series.append(node)
    chart = owned_node(scene, "vtkMRMLPlotChartNode", ROLE_SLICE_CHART, input_node,
                       f"{base} GASE slice confidence plot")
    chart.RemoveAllPlotSeriesNodeIDs()
    for node in series:
        chart.AddAndObservePlotSeriesNodeID(node.GetID())
    chart.SetTitle(f"Confidence per {plane} slice (click a point to go to the slice)")
    chart.SetXAxisTitle(f"{plane} slice")
    chart.SetYAxisTitle("confidence / fraction")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(True)
    return SlicePlot(table_node, chart)


def slice_of_row(table_node, row: int) -> int:
    """Canonical slice index of a row of the slice-confidence table (what a plot click gives)."""
    return int(round(table_node.GetTable().GetValueByName(int(row), SLICE_COLUMNS[0]).ToDouble()))

