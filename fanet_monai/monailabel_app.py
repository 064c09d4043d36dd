"""A MONAI Label app for the packaged FANet bundle, with the where-to-look map and active learning by its score.

MONAI Label's stock ``monaibundle`` app serves a bundle's inference and training, but its active learning knows
only ``random``, ``first`` and dropout-based epistemic scoring (which a network without dropout, like FANet, cannot
use). :func:`write_label_app` (``fanet label_app APP BUNDLE``) writes an app folder — ``main.py`` and the bundle
under ``model/<name>`` — whose :class:`FanetApp` adds to the stock behaviour:

- **Inference tasks** ``<name>`` (the segmentation, with refine-my-mask's options) and ``<name>_where_to_look``: the
  where-to-look map of the same refinement (``confidence`` by default: the best error detector measured, and free)
  returned *as* the result, ``uint8`` 0..255 on the image's grid (255 = look here), with the image's score in the
  result JSON under ``where_to_look_score``. Its own task, not an extra output, because MONAI Label returns one
  label per request and 3D Slicer and OHIF show that one; a second task lets a client fetch the map only when a
  person asks for it.
- **Scoring method** ``<name>_where_to_look``: runs that task over the unlabeled images and stores each score in
  the datastore's image info (``where_to_look_score``; recomputed when the model file changes).
- **Strategy** ``where_to_look``: the unlabeled image with the highest score next (MONAI Label's own top-k/recency
  strategy, :class:`monailabel.tasks.activelearning.epistemic.Epistemic`, reading that key).

This module imports ``monailabel`` and runs only inside MONAI Label's environment, where ``fanet_monai`` is
importable from the bundle's ``scripts/`` (``main.py`` puts it on ``sys.path``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import get_bundle_models, strtobool

from fanet_monai.where_to_look import DEFAULT_MAP, SCORE_KEY, check_where_to_look

__all__ = ["FanetApp", "WhereToLookInferTask", "WhereToLookScoring", "STRATEGY"]

logger = logging.getLogger(__name__)

#: the active-learning strategy's name
STRATEGY = "where_to_look"


class WhereToLookInferTask(BundleInferTask):
    """The bundle's inference with the where-to-look map as the result (``where_to_look`` = ``method``,
    ``where_to_look_result`` on: :class:`~fanet_monai.where_to_look.WhereToLookResultd`)."""

    def __init__(self, path: str, conf: Dict[str, str], method: str = DEFAULT_MAP, **kwargs: Any) -> None:
        super().__init__(path, conf, **kwargs)
        self.method = check_where_to_look(method) or DEFAULT_MAP
        self.description = f"{self.description} — where to look ({self.method}), 255 = look here"
        self.bundle_config["where_to_look"] = self.method
        self.bundle_config["where_to_look_result"] = True


class WhereToLookScoring(ScoringMethod):
    """Score every unlabeled image by its where-to-look map (:func:`~fanet_monai.where_to_look.where_to_look_score`)
    and store it in the datastore's image info under ``where_to_look_score``; an image already scored by the current
    model file is skipped."""

    def __init__(self, infer_task: WhereToLookInferTask, key: str = SCORE_KEY) -> None:
        super().__init__(f"Where-to-look score of every unlabeled image ({infer_task.method} map)")
        self.infer_task = infer_task
        self.key = key

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        start = time.time()
        model_file = self.infer_task.get_path()
        model_ts = int(os.stat(model_file).st_mtime) if model_file and os.path.exists(model_file) else 1
        images = datastore.get_unlabeled_images()
        done, skipped = 0, 0
        for image_id in images:
            if datastore.get_image_info(image_id).get(f"{self.key}_ts") == model_ts:
                skipped += 1
                continue
            _, result = self.infer_task({"image": datastore.get_image_uri(image_id),
                                         "device": request.get("device", "cuda"), "skip_writer": "true"})
            score = float((result.get("result") or {})[self.key])
            datastore.update_image_info(image_id, {self.key: score, f"{self.key}_ts": model_ts})
            logger.info(f"where-to-look score of {image_id}: {score:.4f}")
            done += 1
        return {"total": len(images), "executed": done, "skipped": skipped, "latency": round(time.time() - start, 3)}


class FanetApp(MONAILabelApp):
    """MONAI Label app: the stock bundle app's inference and training for every bundle under ``model/``, plus the
    where-to-look task, scoring method and strategy (see the module doc)."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.models = get_bundle_models(app_dir, conf)
        self.where_to_look_method = conf.get("where_to_look", DEFAULT_MAP)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="FANet (fanet-monai)",
                         description="FANet feedback-attention segmentation with refine-my-mask and where-to-look",
                         version=monailabel.__version__)

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, bundle in self.models.items():
            infers[name] = BundleInferTask(bundle, self.conf)
            infers[f"{name}_where_to_look"] = WhereToLookInferTask(bundle, self.conf, self.where_to_look_method)
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers: Dict[str, TrainTask] = {}
        for name, bundle in self.models.items():
            task = BundleTrainTask(bundle, self.conf)
            if task and task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"random": Random(), "first": First(),
                STRATEGY: Epistemic(key=SCORE_KEY, desc="Unlabeled image with the highest where-to-look score")}

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return {f"{name}_where_to_look": WhereToLookScoring(
                    WhereToLookInferTask(bundle, self.conf, self.where_to_look_method))
                for name, bundle in self.models.items()}
