"""Detectors: load a run or a fused folder (Detector.load decides which) and inspect images.

base.py: what every detector shares and the folder dispatch; run.py: one trained run; fused.py:
several runs as one (`surfad fuse`).
"""

from surfad.detector.base import RUNTIMES, Detector
from surfad.detector.fused import FusedDetector, fuse_runs, model_runs
from surfad.detector.run import RunDetector

__all__ = ["RUNTIMES", "Detector", "FusedDetector", "RunDetector", "fuse_runs", "model_runs"]
