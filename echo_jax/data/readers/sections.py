"""Section parser for MIMIC-CXR free-text reports, following the MIT-LCP rules.

MIMIC-CXR reports (`files/pXX/pSUBJECT/sSTUDY.txt`) are plain text with upper-case headers,
each on its own line after a space: "\\n FINDINGS:\\n". The MIT-LCP `section_parser` (the
mimic-cxr repository's txt/ folder) defines the de-facto split; this module reproduces its
behaviour:

- a header is a newline, one space, an upper-case name of letters, spaces and ()/,- and a
  colon followed by whitespace; a section runs to the next header, which is searched for
  only after the end of the header's line (short inline headers do not end a section);
- the text before the first header is the "preamble";
- names are normalized: frequent synonyms and misspellings ("conclusion", "findings and
  impression", "impresson" -> impression; "finding", "findngs" -> findings), then any name
  containing a main section name, then view descriptions ("pa and lateral", "chest", ...)
  -> findings;
- empty findings/impression sections are dropped (a second, empty "FINDINGS:" is common);
- a report with neither findings nor impression gets its last paragraph (text after the
  first blank line of the last section) as a "last_paragraph" section.

`findings_impression(text)` keeps the last section of each name and returns the pair;
ECHO uses findings + impression, findings-only work can ignore the second.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s", re.DOTALL)

# Lower-cased header -> normalized name (frequent ones and observed misspellings).
_SYNONYMS = {
  "preamble": "preamble",
  "impression": "impression",
  "comparison": "comparison",
  "indication": "indication",
  "findings": "findings",
  "examination": "examination",
  "technique": "technique",
  "history": "history",
  "comparisons": "comparison",
  "clinical history": "history",
  "reason for examination": "indication",
  "notification": "notification",
  "reason for exam": "indication",
  "clinical information": "history",
  "exam": "examination",
  "clinical indication": "indication",
  "conclusion": "impression",
  "chest, two views": "findings",
  "recommendation(s)": "recommendations",
  "type of examination": "examination",
  "reference exam": "comparison",
  "patient history": "history",
  "addendum": "addendum",
  "comparison exam": "comparison",
  "date": "date",
  "comment": "comment",
  "findings and impression": "impression",
  "wet read": "wet read",
  "comparison film": "comparison",
  "recommendations": "recommendations",
  "findings/impression": "impression",
  "pfi": "history",
  "recommendation": "recommendations",
  "wetread": "wet read",
  "ndication": "impression",
  "impresson": "impression",
  "imprression": "impression",
  "imoression": "impression",
  "impressoin": "impression",
  "imprssion": "impression",
  "impresion": "impression",
  "imperssion": "impression",
  "mpression": "impression",
  "impession": "impression",
  "findings/ impression": "impression",
  "finding": "findings",
  "findins": "findings",
  "findindgs": "findings",
  "findgings": "findings",
  "findngs": "findings",
  "findnings": "findings",
  "finidngs": "findings",
  "idication": "indication",
  "reference findings": "findings",
  "comparision": "comparison",
  "comparsion": "comparison",
  "comparrison": "comparison",
  "comparisions": "comparison",
}
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
# Headers that describe the views taken ("PA AND LATERAL VIEWS OF THE CHEST:") open findings.
_VIEW_HEADER = re.compile(
  "(chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|"
  "two views|frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|"
  "frontal semi-upright|ribs|pa and lat)"
)


def normalize_section_name(name: str) -> str:
  """Map one raw header to its normalized section name."""
  s = name.lower().strip()
  if s in _SYNONYMS:
    return _SYNONYMS[s]
  for main in _MAIN_SECTIONS:
    if main in s:
      return main
  if _VIEW_HEADER.search(s):
    return "findings"
  return s


def section_text(text: str) -> tuple[list[str], list[str]]:
  """Split a report into (section texts, normalized section names), in report order."""
  sections: list[str] = []
  names: list[str] = []
  match = _HEADER.search(text)
  if match is None:
    sections.append(text)
    names.append("full report")
  else:
    sections.append(text[: match.start(1)])
    names.append("preamble")
    while match is not None:
      name = match.group(1)
      start = match.end()
      # Look for the next header only after this header's line, as the MIT-LCP parser does.
      newline = text.find("\n", start)
      skip = newline - start if newline != -1 else 0
      match = _HEADER.search(text, start + skip)
      end = match.start() if match is not None else len(text)
      sections.append(text[start:end])
      names.append(name)
  names = [normalize_section_name(n) for n in names]

  # Drop empty findings/impression sections (e.g. a title line parsed as a header).
  for i in reversed(range(len(names))):
    if names[i] in ("impression", "findings") and not sections[i].strip():
      del sections[i], names[i]

  if "impression" not in names and "findings" not in names and "\n \n" in sections[-1]:
    head, *rest = sections[-1].split("\n \n")
    sections[-1] = head
    sections.append("\n \n".join(rest))
    names.append("last_paragraph")
  return sections, names


def last_section(sections: list[str], names: list[str], name: str) -> str:
  """The text of the last section called `name`, whitespace-normalized; "" if none."""
  for text, n in zip(reversed(sections), reversed(names)):
    if n == name:
      return " ".join(text.split())
  return ""


def findings_impression(text: str, *, fallback: bool = True) -> tuple[str, str]:
  """(findings, impression) of a MIMIC-CXR report, whitespace-normalized.

  With `fallback`, a report with neither section uses its last paragraph as the impression
  (the MIT-LCP choice for short one-section reports); otherwise both are "".
  """
  sections, names = section_text(text)
  findings = last_section(sections, names, "findings")
  impression = last_section(sections, names, "impression")
  if fallback and not findings and not impression:
    impression = last_section(sections, names, "last_paragraph")
  return findings, impression
