"""trapkit.taxonomy: SpeciesNet-style 7-token strings and the label,taxonomy CSV."""

from __future__ import annotations

import pytest

from trapkit.errors import TrapkitError
from trapkit.taxonomy import ancestor, display_names, parse_taxon, read_taxonomy_csv

WOLF = "3d80f1d6-b1df-4966-9ff4-94053c7a902a;mammalia;carnivora;canidae;canis;lupus;gray wolf"
LABELS = ("wolf", "fox", "canids", "blank")
ROWS = {
    "wolf": WOLF,
    "fox": ";mammalia;carnivora;canidae;vulpes;vulpes;red fox",
    "canids": ";mammalia;carnivora;canidae;;;canine family",
    "blank": "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank",
}


def _csv(tmp_path, rows, header="label,taxonomy", name="taxonomy.csv"):
    path = tmp_path / name
    path.write_text(header + "\n" + "".join(f'{label},"{text}"\n' for label, text in rows), encoding="utf-8")
    return path


def test_a_taxon_knows_its_ranks_names_and_ancestors():
    wolf = parse_taxon(WOLF)
    assert wolf.path == ("mammalia", "carnivora", "canidae", "canis", "lupus")
    assert (wolf.depth, wolf.latin, wolf.name, wolf.is_taxon) == (5, "canis lupus", "gray wolf", True)
    assert wolf.string == WOLF
    family = ancestor(wolf.path, 3)
    assert family.string == ";mammalia;carnivora;canidae;;;canidae" and family.depth == 3
    blank = parse_taxon(ROWS["blank"])
    assert not blank.is_taxon and blank.name == "blank"
    dog = parse_taxon(";mammalia;carnivora;canidae;canis;lupus familiaris;domestic dog")
    assert dog.latin == "canis lupus familiaris"


def test_csv_gives_strings_in_label_order_lowercased(tmp_path):
    rows = [(label, ROWS[label]) for label in reversed(LABELS)]
    rows[0] = ("blank", ROWS["blank"].upper())
    path = _csv(tmp_path, rows)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's UTF-8 BOM
    assert read_taxonomy_csv(path, LABELS) == tuple(ROWS[label] for label in LABELS)
    assert display_names(LABELS, tuple(ROWS[x] for x in LABELS)) == ["gray wolf", "red fox", "canine family", "blank"]
    assert display_names(LABELS, None) == list(LABELS)


@pytest.mark.parametrize("rows, header, message", [
    ([("wolf", "mammalia;carnivora;canidae;canis;lupus")], None, r"row 2 \(wolf\) has 5 tokens, not 7"),
    ([("fox", ";mammalia;;canidae;vulpes;vulpes;red fox")], None, r"row 2 \(fox\) has a family but no order"),
    ([("blank", ";;;;;;")], None, r"row 2 \(blank\) has neither a class nor a common name"),
    ([("wolf", WOLF), ("coyote", WOLF), ("lynx", WOLF)], None,
     r"row 3 \(coyote\), row 4 \(lynx\) name no class of the model"),
    ([("wolf", WOLF), ("wolf", WOLF)], None, r"row 3 \(wolf\) repeat a label"),
    ([("wolf", WOLF), ("fox", ROWS["fox"])], None, "has no row for canids, blank; add one row per class"),
    ([("wolf", WOLF)], "label,taxon", "needs the columns label,taxonomy"),
])
def test_bad_rows_are_one_line_errors_naming_them(tmp_path, rows, header, message):
    path = _csv(tmp_path, rows, header or "label,taxonomy")
    with pytest.raises(TrapkitError, match=message) as e:
        read_taxonomy_csv(path, LABELS)
    assert "\n" not in str(e.value)


def test_a_missing_or_binary_file_is_one_line(tmp_path):
    with pytest.raises(TrapkitError, match="does not exist"):
        read_taxonomy_csv(tmp_path / "nope.csv", LABELS)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00label")
    with pytest.raises(TrapkitError, match="not UTF-8"):
        read_taxonomy_csv(tmp_path / "bin.csv", LABELS)
