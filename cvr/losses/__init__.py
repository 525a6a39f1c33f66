"""Contrastive losses (InfoNCE with FNE/SPI masks, triplet, supervised contrastive) and view masks."""

from cvr.losses.contrastive import (
    contrastive_pair_masks,
    cosine_duplicates,
    cosine_logits,
    exact_duplicates,
    info_nce_loss,
    masked_contrastive_loss,
    supcon_loss,
    triplet_loss,
)
from cvr.losses.masks import complementary_masks, field_split_masks, independent_masks

__all__ = [
    "complementary_masks",
    "contrastive_pair_masks",
    "cosine_duplicates",
    "cosine_logits",
    "exact_duplicates",
    "field_split_masks",
    "independent_masks",
    "info_nce_loss",
    "masked_contrastive_loss",
    "supcon_loss",
    "triplet_loss",
]
