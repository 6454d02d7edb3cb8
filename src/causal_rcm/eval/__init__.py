from .metrics import AGENT_METRICS, T2V_METRICS, FrameStats, data_row, evaluate, frame_stats

__all__ = ["AGENT_METRICS", "T2V_METRICS", "FrameStats", "data_row", "evaluate", "frame_stats"]
