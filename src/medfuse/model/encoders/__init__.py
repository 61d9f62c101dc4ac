"""Modality encoders: each turns one modality's input tensor into (B, k, d) tokens."""

from medfuse.model.encoders.cxr import CXREncoder
from medfuse.model.encoders.ecg import ECGEncoder
from medfuse.model.encoders.genomics import GenomicsEncoder
from medfuse.model.encoders.notes import NotesEncoder
from medfuse.model.encoders.pooling import AttentionPool
from medfuse.model.encoders.tabular import TabularEncoder

__all__ = ["AttentionPool", "CXREncoder", "ECGEncoder", "GenomicsEncoder", "NotesEncoder", "TabularEncoder"]
