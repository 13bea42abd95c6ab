"""The genomics app's own verbs: `finetune` (train a task from a pretrained encoder) and `embed` (export features)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from apps.common import run
from apps.common.run import App
from apps.genomics.model import DNAModel

log = logging.getLogger(__name__)


def load_encoder(model: DNAModel, checkpoint: str | Path, freeze: bool) -> None:
    """Copy the embedding and backbone weights of a checkpoint (any genomics task) into `model`; freeze them if asked.

    Raises ValueError naming the differing weights when the checkpoint's model is built differently.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    stored = {key[len("model."):]: value for key, value in state.items()
              if key.startswith("model.") and not key.startswith("model.head.")}
    wanted = model.encoder_state_dict()
    differing = sorted(set(stored) ^ set(wanted)) + [k for k in set(stored) & set(wanted) if stored[k].shape != wanted[k].shape]
    if differing:
        raise ValueError(f"{checkpoint}: its encoder differs from this model's in {len(differing)} weights, e.g. {differing[:4]}; "
                         "finetune replays the model overrides of the pretraining run: do not change model.* other than the head")
    model.load_state_dict(stored, strict=False)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("head.") or not freeze)
    log.info("encoder weights from %s%s", checkpoint, " (frozen)" if freeze else "")


def finetune(cfg: DictConfig, app: App) -> dict[str, float]:
    """`train`, starting from the encoder of the checkpoint cfg.ckpt_path (with its model overrides replayed),
    a new head, and the encoder frozen when cfg.freeze_backbone."""
    pretrained = cfg.ckpt_path
    cfg = OmegaConf.merge(cfg, {"ckpt_path": None})

    def build_from_pretrained(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
        task = app.build_task(cfg, datamodule)
        load_encoder(task.model, pretrained, cfg.freeze_backbone)
        return task

    return run.train(cfg, dataclasses.replace(app, build_task=build_from_pretrained))


@torch.no_grad()
def embed(cfg: DictConfig, app: App) -> pd.DataFrame:
    """Mean-pooled features of every record of data.predict_path with the checkpoint cfg.ckpt_path:
    embeddings.npy (records, d_model) float32 and embeddings.csv (name, length), in record order."""
    output_dir = Path(cfg.paths.output_dir)
    datamodule, task = run.data_and_task(cfg, app, "predict")
    task.load_state_dict(torch.load(cfg.ckpt_path, map_location="cpu", weights_only=True)["state_dict"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = task.model.to(device).eval()
    names, lengths, vectors = [], [], []
    for name, tokens in datamodule.predict_dataloader():
        vectors.append(model.embed(tokens.to(device)).float().cpu().numpy()[0])
        names.append(name)
        lengths.append(tokens.shape[1])
    np.save(output_dir / "embeddings.npy", np.stack(vectors))
    frame = pd.DataFrame({"name": names, "length": lengths})
    frame.to_csv(output_dir / "embeddings.csv", index=False)
    log.info("run directory: %s", output_dir)
    return frame
