"""recondiff: reconstruction + multi-scale prototype memory + semantic-difference segmentation (seed 002).

model.py: the torch modules; memory.py: the prototype memory; loss.py: the training loss;
samples.py: the training samples (synthetic defects); schedule.py: the optimiser and its schedule.
"""

from surfad.config import ScoreConfig
from surfad.models.base import GradientRecipe
from surfad.models.recondiff.loss import recondiff_loss
from surfad.models.recondiff.model import RecondiffConfig, RecondiffModel
from surfad.models.recondiff.samples import recondiff_samples
from surfad.models.recondiff.schedule import recondiff_optimizer
from surfad.models.registry import ModelSpec, register

SPEC = register(ModelSpec(
    name="recondiff",
    module=RecondiffModel,
    config=RecondiffConfig,
    summary="reconstruction + prototype memory + segmentation net (seed 002), trained from scratch with "
            "synthetic defects; map = defect probability",
    # The paper pools 21 x 21 at 256 px and averages the top 5; 11 x 11 is that window at the default 128 px.
    default_score=ScoreConfig(reduce="topk", pool=11, topk=5),
    presets={
        "paper": {  # the authors' configuration, for 256 x 256 input (about 79 M parameters, 252 GFLOPs)
            "base_width": 128, "rec_depth": 5, "mblock_sizes": [8, 16], "n_prototypes": 50,
            "seg_base_width": 64, "seg_depth": 6, "negative_aug_ratio": 2, "positive_aug_ratio": 2,
        },
        "cpu": {},  # the config defaults
        # tiny, with the Siamese segmentation net, whose batch handling (cat/chunk on the batch axis)
        # is the part most likely to break a dynamic-batch export
        "tiny": {"base_width": 4, "rec_depth": 3, "seg_base_width": 2, "seg_depth": 3, "n_prototypes": 4,
                 "segnet": "siamese"},
    },
    recipe=GradientRecipe(loss=recondiff_loss, samples=recondiff_samples, optimizer=recondiff_optimizer),
    learns_from_defects=True,
    flags={  # the seed's command-line names
        "mblock-size": "mblock_sizes",
        "positive-aug-ratio": "positive_aug_ratio",
        "negative-aug-ratio": "negative_aug_ratio",
        "detach-recon": "detach_recon",
        "segnet": "segnet",
        "seg-input": "seg_input",
        "defect-source": "defect_source",
    },
))

__all__ = ["SPEC", "RecondiffConfig", "RecondiffModel"]
