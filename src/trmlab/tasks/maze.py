"""Maze: find the unique shortest path from S to G on a grid (the paper's Maze-Hard is 30x30)."""

from __future__ import annotations

from trmlab.tasks.puzzle import PuzzleTask


class MazeTask(PuzzleTask):
    name = "maze"

    @property
    def data_config(self):
        from trmlab.data.maze import MazeDataConfig
        return MazeDataConfig

    def build_data(self, data_cfg, data_root):
        from trmlab.data.maze import build_maze
        return build_maze(data_cfg, out_root=data_root)
