"""xalign: probing the emergence of cross-lingual alignment during LLM training.

A reproducible companion to Wang, Minervini & Ponti (2024), arXiv 2406.13229. Stages are
modules: ``data`` (UD -> UniMorph datasets), ``lab`` (tiny-model pretraining),
``checkpoints`` (checkpoint series), ``extraction`` (word vectors), ``probe`` and
``selection`` (latent-variable intrinsic probe, greedy neuron selection), ``overlap``,
``transfer`` ((Q)LoRA zero-shot transfer), ``stats`` (correlations), ``plots`` and
``store`` (artefact I/O). Notebooks in ``notebooks/`` call them in order.
"""

__version__ = "0.1.0"
