"""surfad: unsupervised visual surface-defect detection.

Train on good images only, calibrate a threshold, inspect new images, measure and deploy.
"""

__version__ = "0.1.0"

from surfad.errors import SurfadError


def __getattr__(name: str):
    # Detector pulls in torch; import lazily so `import surfad` stays cheap.
    if name == "Detector":
        from surfad.detector import Detector

        return Detector
    raise AttributeError(name)


__all__ = ["Detector", "SurfadError", "__version__"]
