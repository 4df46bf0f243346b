"""The family drawn as a genogram, in SVG on the server (no script needed): square for a male,
circle for a female, diamond where the sex is not known, triangle for a pregnancy. A solid line
joins the parents and drops to the baby; a male carer is joined to the mother by a partner or
household line. A person joined to the family by record linkage below certainty, and the line
to them, are dashed, and their assurance level is said. Each person is a link to their summary
(focusable, with a text alternative naming their role, name and how they are known)."""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

W, H = 720, 360
SIZE = 56  # a symbol's width and height
TOP, BOTTOM = 60, 220  # the centre lines of the adults' and the children's rows


@dataclass(frozen=True)
class GenoPerson:
    anchor: str  # the id of the person's summary on the page
    role: str  # infant | mother | father | male-carer | other-carer
    gender: str | None  # male | female | other | unknown | None
    label: str  # the name shown under the symbol
    unborn: bool = False
    inferred: bool = False
    assurance: str | None = None
    relation: str = ""  # how they are related, in words (for the text alternative)

    @property
    def symbol(self) -> str:
        if self.unborn:
            return "triangle"
        return {"male": "square", "female": "circle"}.get(self.gender or "", "diamond")

    @property
    def alt(self) -> str:
        role = ROLE_WORDS.get(self.role, self.role)
        sex = {"square": "male", "circle": "female", "diamond": "sex not known", "triangle": "pregnancy"}[self.symbol]
        parts = [f"{role} {self.label}", sex]
        if self.relation:
            parts.append(self.relation)
        if self.inferred:
            parts.append(f"linked by record linkage, not certain (assurance {self.assurance or 'unknown'})")
        return ", ".join(parts)


ROLE_WORDS = {"infant": "Baby", "mother": "Mother", "father": "Father", "male-carer": "Male carer",
              "other-carer": "Other carer"}


def _shape(p: GenoPerson, cx: float, cy: float) -> str:
    half = SIZE / 2
    dash = ' stroke-dasharray="6 4"' if p.inferred else ""
    style = f'class="fv-geno-symbol" fill="#ffffff" stroke="#212b32" stroke-width="3"{dash}'
    if p.symbol == "square":
        return f'<rect data-symbol="square" x="{cx - half}" y="{cy - half}" width="{SIZE}" height="{SIZE}" {style}/>'
    if p.symbol == "circle":
        return f'<circle data-symbol="circle" cx="{cx}" cy="{cy}" r="{half}" {style}/>'
    if p.symbol == "triangle":
        pts = f"{cx},{cy - half} {cx + half},{cy + half} {cx - half},{cy + half}"
        return f'<polygon data-symbol="triangle" points="{pts}" {style}/>'
    pts = f"{cx},{cy - half} {cx + half},{cy} {cx},{cy + half} {cx - half},{cy}"
    return f'<polygon data-symbol="diamond" points="{pts}" {style}/>'


def _person(p: GenoPerson, cx: float, cy: float) -> str:
    label = p.label if len(p.label) <= 26 else p.label[:25] + "…"
    role = ROLE_WORDS.get(p.role, p.role)
    return (
        f'<a class="fv-geno-person" href="#{escape(p.anchor)}" data-role="{escape(p.role)}" '
        f'data-inferred="{str(p.inferred).lower()}" aria-label="{escape(p.alt)}">'
        f"<title>{escape(p.alt)}</title>{_shape(p, cx, cy)}"
        # one text, so that its words read "Role Name", as the text alternative begins
        f'<text x="{cx}" y="{cy + SIZE / 2 + 20}" text-anchor="middle" font-size="15" fill="#212b32">'
        f'<tspan font-weight="600">{escape(role)}</tspan> <tspan x="{cx}" dy="18">{escape(label)}</tspan></text>'
        "</a>"
    )


def _line(kind: str, x1: float, y1: float, x2: float, y2: float, *, inferred: bool = False, between: str = "") -> str:
    dash = ' stroke-dasharray="8 6"' if inferred else (' stroke-dasharray="2 5"' if kind == "household" else "")
    return (f'<line class="fv-geno-line" data-line="{kind}" data-between="{escape(between)}" data-inferred="{str(inferred).lower()}" '
            f'x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#425563" stroke-width="3"{dash}/>')


def draw(people: list[GenoPerson], *, title: str, carer_lines: dict[str, str] | None = None) -> str:
    """The SVG. carer_lines: anchor of a carer -> "partner" or "household" (default partner)."""
    carer_lines = carer_lines or {}
    mother = next((p for p in people if p.role == "mother"), None)
    fathers = [p for p in people if p.role == "father"]
    carers = [p for p in people if p.role in ("male-carer", "other-carer")]
    children = [p for p in people if p.role == "infant"]
    adults = fathers + ([mother] if mother else []) + carers
    step = W / (len(adults) + 1) if adults else W / 2
    pos: dict[str, tuple[float, float]] = {p.anchor: (step * (i + 1), TOP + SIZE / 2) for i, p in enumerate(adults)}
    parents = [p for p in fathers + ([mother] if mother else [])]
    px = [pos[p.anchor][0] for p in parents] or [W / 2]
    mid = (min(px) + max(px)) / 2
    cstep = 140
    for i, c in enumerate(children):
        pos[c.anchor] = (mid + (i - (len(children) - 1) / 2) * cstep, BOTTOM)
    parts: list[str] = []
    y_adult = TOP + SIZE / 2
    couple_y = y_adult
    if len(parents) >= 2:
        for f in fathers:
            x1, x2 = pos[f.anchor][0] + SIZE / 2, pos[mother.anchor][0] - SIZE / 2 if mother else mid
            parts.append(_line("parents", x1, couple_y, x2, couple_y, inferred=f.inferred, between=f"{f.anchor} {mother.anchor if mother else ''}"))
    if children:
        drop_y = BOTTOM - SIZE / 2 - 24
        top = couple_y if len(parents) >= 2 else couple_y + SIZE / 2
        parts.append(_line("descent", mid, top, mid, drop_y, between="parents children"))
        xs = [pos[c.anchor][0] for c in children]
        if len(children) > 1:
            parts.append(_line("sibship", min(xs), drop_y, max(xs), drop_y, between="children"))
        for c in children:
            parts.append(_line("parent-child", pos[c.anchor][0], drop_y, pos[c.anchor][0], BOTTOM - SIZE / 2,
                               between=f"parents {c.anchor}"))
    for c in carers:
        kind = carer_lines.get(c.anchor, "partner")
        # from the mother's other side: never along the parents' line, which joins her to the father
        x1 = pos[mother.anchor][0] + SIZE / 2 if mother else W / 2
        parts.append(_line(kind, x1, y_adult, pos[c.anchor][0] - SIZE / 2, y_adult, inferred=c.inferred,
                           between=f"{mother.anchor if mother else ''} {c.anchor}"))
    for p in adults + children:
        parts.append(_person(p, *pos[p.anchor]))
    legend = (
        '<g class="fv-geno-legend" aria-hidden="true" font-size="13" fill="#425563">'
        f'<text x="10" y="{H - 30}">Square male · circle female · diamond sex not known · triangle pregnancy</text>'
        f'<text x="10" y="{H - 12}">Solid line: recorded · dotted: household · dashed: joined by record linkage, not certain</text>'
        "</g>"
    )
    return (
        f'<svg class="fv-genogram" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" '
        f'role="group" aria-labelledby="genogram-title" font-family="Frutiger W01, Arial, sans-serif">'
        f'<title id="genogram-title">{escape(title)}</title>' + "".join(parts) + legend + "</svg>"
    )
