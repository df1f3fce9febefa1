"""Phrase lists of the rule-based CheXpert labeler (``chexpert_labeler.py``).

Modelled on the design of the published CheXpert labeler (Irvin et al., 2019):
per observation a list of *mention* phrases and of *unmention* phrases (text that
contains a mention but does not refer to the observation), plus three ordered cue
lists: pre-negation uncertainty, negation, post-negation uncertainty. The lists are
written for this project; they are regular-expression fragments matched on
lower-cased text at word boundaries.

Beyond the published design, some observations have *anchors*: neutral phrases
("heart size", "cardiomediastinal silhouette") that count as a mention only when
the same clause qualifies them ("enlarged" -> the finding; "normal" -> its
negation). "The heart size is stable" therefore mentions nothing, where the
published labeler would call it positive.
"""

from __future__ import annotations

# The 14 CheXpert observations, in the order of the CheXpert / MIMIC-CXR label files.
OBSERVATIONS: tuple[str, ...] = (
  "No Finding",
  "Enlarged Cardiomediastinum",
  "Cardiomegaly",
  "Lung Opacity",
  "Lung Lesion",
  "Edema",
  "Consolidation",
  "Pneumonia",
  "Atelectasis",
  "Pneumothorax",
  "Pleural Effusion",
  "Pleural Other",
  "Fracture",
  "Support Devices",
)
# The five labels most papers report F1 on.
COMMON5: tuple[str, ...] = (
  "Atelectasis",
  "Cardiomegaly",
  "Consolidation",
  "Edema",
  "Pleural Effusion",
)


MENTIONS: dict[str, list[str]] = {
  "Enlarged Cardiomediastinum": [
    r"enlarged cardiomediastin\w*",
    r"(?:widen\w*|enlarge\w*|prominen\w*) (?:of )?(?:the )?(?:superior )?mediastin\w*",
    r"mediastinal (?:widening|enlargement|prominence)",
    r"cardiomediastinal enlargement",
  ],
  "Cardiomegaly": [
    r"cardiomegaly",
    r"cardiac (?:enlargement|silhouette enlargement)",
    r"enlarged (?:cardiac silhouette|heart|cardiac contour)",
    r"enlargement of the (?:cardiac silhouette|heart|cardiac contour)",
    r"cardiac silhouette enlargement",
  ],
  "Lung Opacity": [
    r"opaci(?:ty|ties|fication|fications)",
    r"infiltrat(?:e|es|ion|ions)",
    r"air\s?-?space (?:disease|process)",
    r"increased (?:density|densities|markings)",
    r"ground[- ]glass",
    r"haz(?:y|iness)",
    r"reticula(?:r|tion)",
  ],
  "Lung Lesion": [
    r"mass(?:es)?",
    r"nodul(?:e|es|ar|arity)",
    r"(?:pulmonary|lung|cavitary|cavitating|spiculated) lesions?",
    r"lesions?",
    r"tumou?rs?",
    r"neoplasms?",
    r"carcinoma",
    r"(?:lung )?cancer",
    r"metasta(?:sis|ses|tic disease)",
  ],
  "Edema": [
    r"(?:pulmonary |interstitial |alveolar |perihilar )?edema",
    r"(?:pulmonary )?vascular congestion",
    r"pulmonary congestion",
    r"(?:congestive )?heart failure",
    r"chf",
    r"fluid overload",
    r"kerley b",
    r"cephalization",
  ],
  "Consolidation": [
    r"consolidat(?:ion|ions|ive|ed)",
  ],
  "Pneumonia": [
    r"(?:broncho)?pneumonias?",
    r"pneumonic",
    r"infecti(?:on|ous process|ous)",
  ],
  "Atelectasis": [
    r"atelecta(?:sis|ses|tic)",
    r"(?:lobar|lobe|segmental|lung) collapse",
    r"collapse of the (?:\w+ )?(?:\w+ )?lobe",
  ],
  "Pneumothorax": [
    r"(?:hydro)?pneumothora(?:x|ces)",
  ],
  "Pleural Effusion": [
    r"(?:pleural )?effusions?",
    r"pleural fluid",
    r"hydropneumothora(?:x|ces)",
    r"hydrothorax",
    r"fluid (?:in|within) the (?:\w+ )?(?:pleural space|fissure)",
  ],
  "Pleural Other": [
    r"pleural (?:thickening|plaques?|scarring|calcifications?)",
    r"(?:apical )?pleural[- ]parenchymal (?:scarring|thickening)",
    r"fibrothorax",
    r"apical (?:pleural )?cap",
  ],
  "Fracture": [
    r"fractur(?:e|es|ed)",
    r"fx",
  ],
  "Support Devices": [
    r"(?:endotracheal|et|tracheostomy|trach|nasogastric|ng|orogastric|og|feeding|chest|enteric|dobhoff|gastric|thoracostomy) tubes?",
    r"(?:tubes?|lines?) (?:and|or|and/or) (?:tubes?|lines?)",
    r"picc(?: line)?",
    r"central (?:venous )?(?:line|catheter)s?",
    r"(?:internal jugular|ij|subclavian|femoral) (?:central )?(?:venous )?(?:line|catheter|sheath|introducer)s?",
    r"swan[- ]ganz(?: catheter)?",
    r"pulmonary artery catheter",
    r"catheters?",
    r"pacemakers?|pacers?|aicd|icd|defibrillators?",
    r"(?:pacer|pacemaker|pacing|transvenous) (?:leads?|wires?)",
    r"leads?(?= (?:terminat|end|project|in the))",
    r"stents?",
    r"(?:prosthetic|mechanical|replaced) (?:aortic |mitral )?valves?|valve replacement",
    r"drains?",
    r"(?:port[- ]?a[- ]?cath|chest port|mediport|port)s?",
    r"(?:support|monitoring|indwelling|medical) devices?",
    r"(?:surgical )?hardware",
    r"(?:impella|lvad|iabp|intra-?aortic balloon pump)",
  ],
}

# Text containing a mention that does not refer to the observation.
UNMENTIONS: dict[str, list[str]] = {
  "Lung Lesion": [
    r"mass effect",
    r"(?:osseous|bony|bone|lytic|sclerotic|skin|cutaneous|breast|soft tissue|chest wall) (?:lesions?|mass(?:es)?|nodules?)",
    r"nipple (?:shadows?|markers?)",
    r"nodular (?:\w+ )?(?:pleural )?thickening",
  ],
  "Edema": [
    r"(?:soft tissue|subcutaneous|chest wall) edema",
  ],
  "Pleural Effusion": [
    r"(?:pericardial|joint) effusions?",
  ],
  "Support Devices": [
    r"(?:pleural|skin|mid|septal) ?lines?",
  ],
  "Lung Opacity": [
    r"(?:soft tissue|osseous) opacit(?:y|ies)",
  ],
  "Fracture": [],
}

# Neutral phrases that mention an observation only when the clause qualifies them.
ANCHORS: dict[str, list[str]] = {
  "Cardiomegaly": [
    r"heart size",
    r"size of the heart",
    r"cardiac (?:size|silhouette|contours?|shadow)",
    r"heart(?! failure)",
  ],
  "Enlarged Cardiomediastinum": [
    r"cardiomediastinal (?:silhouette|contours?|size|shadow)",
    r"(?:cardio)?mediastinal (?:silhouette|contours?|width)",
    r"mediastinum",
    r"cardiomediastinum",
  ],
}
# Anchors that only count when qualified as normal: a normal cardiomediastinal
# silhouette implies a normal heart size, an abnormal one names no single cause.
NORMAL_ONLY_ANCHORS: dict[str, list[str]] = {
  "Cardiomegaly": [r"cardiomediastinal (?:silhouette|contours?|size|shadow)"],
}
# Qualifiers that turn an anchor into a positive mention.
ANCHOR_ABNORMAL: dict[str, str] = {
  "Cardiomegaly": r"enlarge\w*|increased|large|prominent",
  "Enlarged Cardiomediastinum": r"widen\w*|enlarge\w*|prominen\w*|increased",
}
# Qualifiers that turn an anchor into a negative mention.
ANCHOR_NORMAL = r"normal|unremarkable|within normal limits"
# Words between an anchor and a following qualifier: anything except clause ends.
ANCHOR_WINDOW_AFTER = 8
ANCHOR_WINDOW_BEFORE = 3

# Other findings: a positive or uncertain mention of one of these means the report
# is not "No Finding" (as in the published labeler's no_finding mention list).
OTHER_FINDINGS: list[str] = [
  r"emphysema(?:tous)?",
  r"copd",
  r"hyperinfla\w+",
  r"hyperexpan\w+",
  r"scoliosis",
  r"kyphosis",
  r"(?:hiatal|hiatus|diaphragmatic) hernia",
  r"granulomas?",
  r"calcified (?:granulomas?|nodules?|lymph nodes?)",
  r"fibrosis",
  r"fibrotic",
  r"bronchiectasis",
  r"scar(?:ring|s)?",
  r"pneumomediastinum",
  r"pneumoperitoneum",
  r"free air",
  r"subcutaneous (?:emphysema|air|gas)",
  r"elevat(?:ed|ion of the) (?:left |right )?(?:hemi)?diaphragm",
  r"blunting of the (?:\w+ )?costophrenic angles?",
  r"costophrenic angle blunting",
  r"degenerative (?:changes?|disease)",
  r"osteopenia",
  r"(?:osseous|bony|bone|lytic|sclerotic) (?:lesions?|metastas[ie]s)",
  r"bullae|bullous",
  r"pericardial effusion",
  r"thickening",
  r"interstitial (?:markings|abnormality|lung disease)",
  r"volume loss",
  r"deformity",
  r"aspiration",
  r"(?:aortic|vascular) calcifications?",
  r"tortuous (?:thoracic )?aorta|aortic tortuosity",
  r"lymphadenopathy",
  r"hilar (?:enlargement|prominence|fullness)",
]

# Cue lists. Pre-cues precede the mention in its clause, post-cues follow it
# within POST_WINDOW words, inner cues sit between an anchor and its qualifier.
PRE_NEG_UNCERTAINTY_PRE: list[str] = [
  r"(?:cannot|can ?not|can't|could not|couldn't|does not|doesn't|do not) (?:be )?(?:entirely |completely |definitely )?(?:exclude|excluded|rule out|ruled out)",
  r"(?:not|difficult to|unable to|hard to) (?:entirely |completely |definitely )?(?:exclude|rule out)",
  r"no (?:definite|clear) (?:evidence|signs?) (?:to exclude|against)",
]
PRE_NEG_UNCERTAINTY_POST: list[str] = [
  r"(?:cannot|can ?not|can't|could not|may not|might not) (?:be )?(?:entirely |completely |definitely |totally )?(?:excluded|ruled out)",
  r"(?:is|are|was|were) not (?:entirely |completely |definitely )?(?:excluded|ruled out)",
  r"not (?:entirely |completely |definitely )?(?:excluded|ruled out)",
]
NEGATION_PRE: list[str] = [
  r"\bno\b",
  r"\bnot\b",
  r"\bnor\b",
  r"without",
  r"negative for",
  r"free of",
  r"absence of",
  r"absent",
  r"resolution of",
  r"resolved",
  r"removal of",
  r"interval removal",
  r"clear of",
  r"rather than",
  r"ruled out",
]
NEGATION_POST: list[str] = [
  r"(?:is|are|was|were|has been|have been)? ?(?:not|no longer) (?:\w+ )?(?:seen|identified|present|visuali[sz]ed|evident|appreciated|demonstrated|noted|detected|visible|apparent|enlarged|widened|dilated|re-?demonstrated|appreciable)",
  r"(?:has|have)? ?(?:completely |nearly |almost )?(?:resolved|cleared|disappeared)",
  r"(?:has|have) been (?:removed|withdrawn|discontinued)",
  r"(?:was|were)? ?removed",
  r"(?:is|are)? ?absent",
  r"(?:is|are|appears?|remains?) (?:otherwise )?(?:normal|unremarkable)",
  r"within normal limits",
  r"normal in (?:size|caliber|contour)",
]
# Words inside an anchor span (between anchor and qualifier) that negate it.
NEGATION_INNER: list[str] = [r"\bnot\b", r"no longer", r"\bno\b"]
# "no change in X" states that X is there: these are removed before negation cues.
PSEUDO_NEGATIONS: list[str] = [
  r"no (?:significant |appreciable |substantial |definite |interval |further |new |other )?(?:change|increase|decrease|improvement|worsening|progression|enlargement)s?(?: (?:in|of))?",
  r"not (?:significantly |substantially )?(?:changed|increased|decreased|improved|worsened)",
  r"without (?:significant |interval |substantial )?(?:change|increase|decrease|improvement|worsening|progression)",
  r"not only",
  r"no longer (?:requires?|needed)",
]
UNCERTAINTY_PRE: list[str] = [
  r"possibl[ey]",
  r"probabl[ey]",
  r"likely",
  r"(?:may|might|could|can) (?:\w+ )?(?:be|represent|reflect|indicate|relate|correspond|suggest|have|include)",
  r"suggest(?:s|ed|ive|ing)?(?: of)?",
  r"(?:concerning|concern|suspicious|worrisome) (?:for|of)",
  r"suspect(?:ed)?",
  r"questionabl[ey]",
  r"question of",
  r"\?",
  r"equivocal",
  r"indeterminate",
  r"borderline",
  r"top[- ]normal|upper limits? of normal|at the upper limit",
  r"presum(?:ed|ably)",
  r"(?:differential|ddx)(?: diagnosis)?(?: includes?)?",
  r"consider(?:ed)?",
  r"(?:rule out|r/o|evaluate for|assess for|evaluation for|to exclude)",
  r"versus|\bvs\b",
  r"cannot be (?:entirely )?distinguished",
  r"not (?:entirely |completely )?(?:clear|certain)",
  r"(?:developing|early|incipient|evolving)",
  r"atypical",
]
UNCERTAINTY_POST: list[str] = [
  r"(?:is|are|was|were) (?:also )?(?:possible|probable|likely|suspected|questioned|questionable|not (?:entirely )?clear|uncertain|equivocal)",
  r"(?:may|might|could) be (?:present|seen|noted|there)",
  r"\?",
  r"versus|\bvs\b",
  r"(?:is|are) (?:borderline|top[- ]normal|at the upper limits? of normal)",
]
# "A or B" makes both uncertain when the clause is not negated: cue must sit
# within OR_WINDOW words of the mention.
OR_CUE = r"\bor\b|and/or"
OR_WINDOW = 3
POST_WINDOW = 8

# Words and marks that end the scope of a cue inside a sentence.
TERMINATORS: list[str] = [
  r"\bbut\b",
  r"\bhowever\b",
  r"\balthough\b",
  r"\bthough\b",
  r"\bexcept\b",
  r"\baside from\b",
  r"\bapart from\b",
  r"\bother than\b",
  r"\bwhich\b",
  r"\bwhereas\b",
  r"\bwhile\b",
  r"\botherwise\b",
  r"\byet\b",
  r"\band there (?:is|are)\b",
  r", (?=there (?:is|are)\b)",
  r"\bwith (?=(?:new|increased|persistent|interval|mild|moderate|severe|small|large|a|an|residual|worsening)\b)",
  r"\bdespite\b",
  r":",
]
