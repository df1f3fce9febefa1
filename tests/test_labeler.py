"""Rule-based CheXpert labeler and rule-based CheXpert F1 on sentences written like real reports."""

import math

import numpy as np
import pytest

from echo_jax.eval.chexpert_labeler import NEGATIVE, POSITIVE, UNCERTAIN, CheXpertLabeler
from echo_jax.eval.chexpert_phrases import OBSERVATIONS
from echo_jax.eval.clinical import clinical_f1

P, N, U = 1.0, 0.0, -1.0


@pytest.fixture(scope="module")
def lab():
  return CheXpertLabeler()


CASES = [
  ("No focal consolidation.", {"Consolidation": N}),
  ("Cannot exclude a small effusion.", {"Pleural Effusion": U}),
  ("Stable cardiomegaly.", {"Cardiomegaly": P}),
  ("Lines and tubes unchanged.", {"Support Devices": P}),
  ("Heart size is normal.", {"Cardiomegaly": N}),
  ("The heart is mildly enlarged.", {"Cardiomegaly": P}),
  ("The heart is not enlarged.", {"Cardiomegaly": N}),
  ("Heart size is top normal.", {"Cardiomegaly": U}),
  ("Heart size is stable.", {"Cardiomegaly": None}),
  ("Normal cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": N}),
  ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": P}),
  ("No pleural effusion or pneumothorax.", {"Pleural Effusion": N, "Pneumothorax": N}),
  (
    "Focal consolidation, pleural effusion, or pneumothorax is not seen.",
    {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N},
  ),
  (
    "Left basilar opacity may represent atelectasis or pneumonia.",
    {"Lung Opacity": P, "Atelectasis": U, "Pneumonia": U},
  ),
  (
    "Right lower lobe consolidation, concerning for pneumonia.",
    {"Consolidation": P, "Pneumonia": U},
  ),
  ("No change in the small left pleural effusion.", {"Pleural Effusion": P}),
  ("Pneumothorax has resolved.", {"Pneumothorax": N}),
  ("The endotracheal tube has been removed.", {"Support Devices": N}),
  ("Pneumothorax is not excluded.", {"Pneumothorax": U}),
  ("Mild pulmonary edema, but no effusion.", {"Edema": P, "Pleural Effusion": N}),
  ("Small effusion, otherwise normal.", {"Pleural Effusion": P}),
  ("Mass effect on the trachea.", {"Lung Lesion": None}),
  ("A 2 cm nodule in the right upper lobe.", {"Lung Lesion": P}),
  ("Pericardial effusion is noted.", {"Pleural Effusion": None}),
  ("Acute fracture of the left sixth rib.", {"Fracture": P}),
  ("No displaced rib fracture.", {"Fracture": N}),
  ("Possible early pneumonia in the right lower lobe.", {"Pneumonia": U}),
  ("Findings suggestive of pulmonary edema.", {"Edema": U}),
  ("Pleural thickening at the left apex.", {"Pleural Other": P}),
  ("A right PICC line terminates in the mid SVC.", {"Support Devices": P}),
  ("Pulmonary vascular congestion without overt edema.", {"Edema": P}),
  ("Is there pneumothorax?", {"Pneumothorax": U}),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:40] for c in CASES])
def test_sentence_labels(lab, text, expected):
  got = lab.label(text)
  for obs, want in expected.items():
    if want is None:
      assert math.isnan(got[obs]), f"{obs}: expected no mention, got {got[obs]}"
    else:
      assert got[obs] == want, f"{obs}: expected {want}, got {got[obs]} ({lab.mentions(text)})"


def test_order_pre_negation_uncertainty_beats_negation(lab):
  # "cannot exclude" contains the negation cue "not": the first pass must win.
  (m,) = [m for m in lab.mentions("Cannot exclude pneumonia.") if m.observation == "Pneumonia"]
  assert m.status == UNCERTAIN and "exclude" in m.cue
  (m,) = [m for m in lab.mentions("No evidence of pneumonia.") if m.observation == "Pneumonia"]
  assert m.status == NEGATIVE


def test_negation_scope_ends_at_terminator(lab):
  got = lab.label("No pneumothorax, but there is a small left effusion.")
  assert got["Pneumothorax"] == N and got["Pleural Effusion"] == P


def test_aggregation_positive_beats_negative_and_uncertain_beats_negative(lab):
  got = lab.label("Findings: No pleural effusion. Impression: Small right pleural effusion.")
  assert got["Pleural Effusion"] == P
  got = lab.label("No consolidation on the right. Possible consolidation at the left base.")
  assert got["Consolidation"] == U


def test_chf_adds_uncertain_cardiomegaly(lab):
  got = lab.label("Findings consistent with congestive heart failure.")
  assert got["Edema"] == P and got["Cardiomegaly"] == U


def test_no_finding_rule(lab):
  normal = (
    "Findings: The lungs are clear without focal consolidation, effusion, or pneumothorax. "
    "The heart is normal in size. Impression: No acute cardiopulmonary process."
  )
  got = lab.label(normal)
  assert got["No Finding"] == P
  assert got["Consolidation"] == N and got["Cardiomegaly"] == N
  # support devices alone keep No Finding; any other positive or uncertain finding removes it
  assert lab.label(normal + " Endotracheal tube in standard position.")["No Finding"] == P
  assert math.isnan(lab.label(normal + " Possible small left effusion.")["No Finding"])
  assert math.isnan(lab.label(normal + " Mild degenerative changes of the spine.")["No Finding"])
  assert lab.label(normal + " No emphysema.")["No Finding"] == P


def test_mentions_carry_spans_into_original_text(lab):
  text = "Findings: Moderate CARDIOMEGALY. No effusion."
  ms = lab.mentions(text)
  assert [(m.observation, m.text, m.status) for m in ms] == [
    ("Cardiomegaly", "CARDIOMEGALY", POSITIVE),
    ("Pleural Effusion", "effusion", NEGATIVE),
  ]
  assert all(text[m.start : m.end] == m.text for m in ms)


def test_label_many_shape_and_order(lab):
  arr = lab.label_many(["Stable cardiomegaly.", "No pneumothorax."])
  assert arr.shape == (2, 14)
  assert arr[0, OBSERVATIONS.index("Cardiomegaly")] == P
  assert arr[1, OBSERVATIONS.index("Pneumothorax")] == N and arr[1, 0] == P
  with pytest.raises(TypeError, match="report must be str"):
    lab.label(None)


def _row(**kw):
  r = np.full(14, np.nan)
  for k, v in kw.items():
    r[OBSERVATIONS.index(k.replace("_", " "))] = v
  return r


def test_clinical_f1_small_example_by_hand():
  ref = np.stack([_row(Cardiomegaly=1, Edema=1), _row(Atelectasis=1), _row(No_Finding=1)])
  pred = np.stack(
    [_row(Cardiomegaly=1, Edema=-1), _row(Atelectasis=0, Consolidation=1), _row(No_Finding=1)]
  )
  pos = clinical_f1(pred, ref, "positive")
  # uncertain as positive: TP = Cardiomegaly, Edema, No Finding = 3; FP = Consolidation; FN = Atelectasis
  assert pos["f1_micro_14"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
  # per label F1: Cardiomegaly 1, Edema 1, No Finding 1, Atelectasis 0, Consolidation 0, rest 0
  assert pos["f1_macro_14"] == pytest.approx(3 / 14)
  # five common labels: Atelectasis 0, Cardiomegaly 1, Consolidation 0, Edema 1, Effusion 0
  assert pos["f1_micro_5"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
  assert pos["f1_macro_5"] == pytest.approx(2 / 5)
  neg = clinical_f1(pred, ref, "negative")
  # uncertain as negative: Edema becomes a false negative
  assert neg["f1_micro_14"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
  assert neg["f1/Edema"] == 0.0 and pos["f1/Edema"] == 1.0
  assert pos["f1/Fracture"] is None  # in no report: undefined, counted as 0 in macro
  with pytest.raises(ValueError, match="uncertain"):
    clinical_f1(pred, ref, "ignore")
  with pytest.raises(ValueError, match=r"\[N, 14\]"):
    clinical_f1(pred[:, :5], ref[:, :5])


def test_every_synthetic_benchmark_sentence(lab):
  synthetic = pytest.importorskip("echo_jax.data.synthetic")
  n = 0
  for key, text, labels in synthetic.enumerate_sentences():
    got = lab.label(text)
    for obs in OBSERVATIONS[1:]:
      want = labels.get(obs)
      g = None if math.isnan(got[obs]) else int(got[obs])
      assert g == want, f"{key}: {text!r}: {obs} expected {want}, got {g} ({lab.mentions(text)})"
    n += 1
  assert n > 400


def test_synthetic_studies_labels_recovered_from_reference_reports(lab):
  synthetic = pytest.importorskip("echo_jax.data.synthetic")
  studies = [synthetic.generate_study(i, seed=7, render=False) for i in range(300)]
  got = np.nan_to_num(lab.label_many([s.report for s in studies]), nan=0.0)
  want = np.array([[s.labels[o] for o in OBSERVATIONS] for s in studies], np.float64)
  assert (want.sum(0) > 0).all(), "every observation should occur in 300 studies"
  mismatches = [(studies[i].id, OBSERVATIONS[j]) for i, j in zip(*np.nonzero(got != want))]
  assert mismatches == []
  f1 = clinical_f1(got, want)
  assert f1["f1_micro_14"] == 1.0 and f1["f1_macro_14"] == 1.0
