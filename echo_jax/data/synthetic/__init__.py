"""The embedded synthetic chest X-ray benchmark.

Procedural radiographs with known findings, CheXpert labels and normalized,
paraphrased reports, written in the R2Gen annotation.json layout:

  python -m echo_jax.data.synthetic --out /tmp/synth --num_studies 2000 --seed 0 [--lateral]

Python API: `generate_study(index, seed, ...)` for one study in memory,
`write_benchmark(out_dir, num_studies, seed, ...)` for a dataset on disk, and
`phrase_inventory()` / `enumerate_sentences()` for every statement a report
can contain (for labeler tests).
"""

from echo_jax.data.synthetic.labels import CHEXPERT_LABELS, labels_from_findings
from echo_jax.data.synthetic.reports import Phrase, enumerate_sentences, phrase_inventory
from echo_jax.data.synthetic.study import SyntheticStudy, generate_study, split_of, study_id
from echo_jax.data.synthetic.writer import is_complete, write_benchmark

__all__ = [
  "CHEXPERT_LABELS",
  "Phrase",
  "SyntheticStudy",
  "enumerate_sentences",
  "generate_study",
  "is_complete",
  "labels_from_findings",
  "phrase_inventory",
  "split_of",
  "study_id",
  "write_benchmark",
]
