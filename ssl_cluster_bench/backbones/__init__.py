"""Backbones: model cards (YAML data) -> frozen feature extractors.

    from ssl_cluster_bench.backbones import list_cards, load_card, create_backbone
    backbone = create_backbone("dino-vits16")             # card id, card YAML path or ModelCard
    features = backbone.model(torch.stack([backbone.transform(img) for img in images]))   # N x feature_dim
    backbone = create_backbone(None, arch="resnet50", checkpoint="moco_v2_800ep_pretrain.pth.tar")

Modules: ``cards`` (schema, search path), ``factory`` (card -> model + transform), ``checkpoints`` (SSL
checkpoint loading), ``downloads`` (weight caches, offline fail-fast).
"""
from .cards import ModelCard, Preprocessing, card_dirs, list_cards, load_card
from .checkpoints import LoadReport, load_checkpoint
from .factory import Backbone, build_arch, create_backbone

__all__ = ["Backbone", "LoadReport", "ModelCard", "Preprocessing", "build_arch", "card_dirs", "create_backbone",
           "list_cards", "load_card", "load_checkpoint"]
