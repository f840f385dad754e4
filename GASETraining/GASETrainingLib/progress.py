"""Live training curves in the scene: the losses and the validation Dice as MRML tables and one plot chart.

Each update rebuilds the tables from a :class:`~.job.TrainingStatus` (a few hundred rows at most), so a
resumed run, whose history restarts at its checkpoint, is drawn correctly. The nodes are found again by
their ``GASETraining.Run`` attribute, so polling never piles up duplicates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import vtk

import slicer

from .job import TrainingStatus

RUN_ATTRIBUTE = "GASETraining.Run"
ROLE_ATTRIBUTE = "GASETraining.Role"
ITERATION = "iteration"
DICE = "validation Dice"
# Loss colours (Dice is black): distinct on white, in the order the loop reports the losses.
PALETTE = ((0.12, 0.47, 0.71), (1.0, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.40, 0.74),
           (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.50, 0.50, 0.50), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81))


@dataclass
class TrainingCharts:
    """The losses table, the Dice table and the chart showing both, for one training run."""

    losses: object
    dice: object
    chart: object

    @staticmethod
    def for_run(scene, run_name: str) -> "TrainingCharts":
        """The run's chart nodes, created on first use."""
        return TrainingCharts(_node(scene, "vtkMRMLTableNode", run_name, "losses", f"{run_name} training losses"),
                              _node(scene, "vtkMRMLTableNode", run_name, "dice", f"{run_name} validation Dice"),
                              _node(scene, "vtkMRMLPlotChartNode", run_name, "chart", f"{run_name} training"))

    def update(self, status: TrainingStatus) -> None:
        names: list[str] = []
        for _, losses in status.loss_history:
            names += [k for k in losses if k not in names]
        _fill(self.losses, [ITERATION] + names,
              [[it] + [losses.get(k, math.nan) for k in names] for it, losses in status.loss_history])
        _fill(self.dice, [ITERATION, DICE], [[it, d] for it, d in status.val_history])
        scene = self.chart.GetScene()
        run = self.chart.GetAttribute(RUN_ATTRIBUTE)
        wanted = [(self.losses, name, PALETTE[n % len(PALETTE)]) for n, name in enumerate(names)]
        wanted.append((self.dice, DICE, (0.0, 0.0, 0.0)))
        ids = []
        for table, column, color in wanted:
            series = _node(scene, "vtkMRMLPlotSeriesNode", run, f"series {column}", f"{run} {column}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName(ITERATION)
            series.SetYColumnName(column)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle if column == DICE
                                  else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetLineWidth(3 if column == DICE else 2)
            series.SetColor(*color)
            ids.append(series.GetID())
        if [self.chart.GetNthPlotSeriesNodeID(n) for n in range(self.chart.GetNumberOfPlotSeriesNodes())] != ids:
            self.chart.RemoveAllPlotSeriesNodeIDs()
            for node_id in ids:
                self.chart.AddAndObservePlotSeriesNodeID(node_id)
        self.chart.SetTitle(f"{run}: {status.summary()}")
        self.chart.SetXAxisTitle("iteration")
        self.chart.SetYAxisTitle("loss / validation Dice")
        self.chart.SetLegendVisibility(True)


def _node(scene, class_name: str, run: str, role: str, name: str):
    nodes = scene.GetNodesByClass(class_name)
    for n in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(n)
        if node.GetAttribute(RUN_ATTRIBUTE) == run and node.GetAttribute(ROLE_ATTRIBUTE) == role:
            return node
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAttribute(RUN_ATTRIBUTE, run)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    return node


def _fill(table_node, columns: list[str], rows: list[list[float]]) -> None:
    table = vtk.vtkTable()
    arrays = []
    for title in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(title)
        table.AddColumn(array)
        arrays.append(array)
    for row in rows:
        for array, value in zip(arrays, row):
            array.InsertNextValue(float(value))
    table_node.SetAndObserveTable(table)
    table_node.SetLocked(True)  # a record of the run; editing it would change nothing
