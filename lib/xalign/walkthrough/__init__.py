"""One unit of the method, shown inline in a notebook before its sweep: small functions that
pick one real example (a sentence, a probe, a pair, a fine-tuning run) from a run's
artefacts or the data bundle, compute what the stage computes for it with the kernels of
``xalign``, and return tables and figures to display. No algorithm lives here that the
stages do not use; these functions only choose, call and draw.

* :mod:`.data` — notebooks 00–02: a tokenizer and loss curve, one UD sentence to UniMorph
  and the lemma split, one sentence's subwords to words and a word vector per layer.
* :mod:`.probing` — notebooks 03–04: one probe trained inline (curve, mask marginals, the
  greedy path), one pair's overlap with its exact p-value, one heatmap.
* :mod:`.transfer` — notebooks 05–06: one fine-tuning curve and per-language scores, the
  scatter behind each Table 1 cell.
"""
