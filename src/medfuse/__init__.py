"""medfuse: multimodal medical reasoning (CXR, ECG, labs, vitals, notes, genomics)."""

__version__ = "0.1.0"
