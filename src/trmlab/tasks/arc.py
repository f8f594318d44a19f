"""ARC-AGI: one puzzle id per task x augmentation; voting over augmentations gives pass@1 / pass@2."""

from __future__ import annotations

from trmlab.tasks.puzzle import PuzzleTask


class ArcTask(PuzzleTask):
    name = "arc"
    metric = "pass@2"

    @property
    def data_config(self):
        from trmlab.data.arc import ArcDataConfig
        return ArcDataConfig

    def build_data(self, data_cfg, data_root):
        from trmlab.data.arc import build_arc
        return build_arc(data_cfg, out_root=data_root)
