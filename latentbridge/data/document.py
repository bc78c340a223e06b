"""Documents: ordered items of any modalities, one training example each (docs/documents.md).

A data set that yields documents declares the field `document` (`fields = {"document": "document"}`, beside any
others). Each entry of that field is one document: a list of items, each a `DocItem(modality, value)` or a plain
`(modality, value)` pair, e.g.

    [DocItem("text", "a cat left of a dog."), DocItem("image", array), DocItem("text", "then they swap."), ...]

A document task (`tasks.NAME.document: [text, image]`) sends each item to the role of its modality and trains
every item as a target, each block conditioned on everything before it; the prior's switch head learns which
modality follows each item, or the end of the document.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from latentbridge.errors import DatasetOutputError


class DocItem(NamedTuple):
    """One item of a document: its modality ("text", "image", ...) and the value that modality's codec encodes."""

    modality: str
    value: Any


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    size = getattr(value, "size", None)  # numpy arrays (size is an int), PIL images (size is (w, h))
    if isinstance(size, int):
        return size == 0
    if callable(getattr(value, "numel", None)):
        return value.numel() == 0
    try:
        return len(value) == 0
    except TypeError:
        return False


def as_document(doc: Any, modalities: Iterable[str], where: str) -> list[DocItem]:
    """`doc` checked and as DocItems, or DatasetOutputError naming `where`, the item and the fix: a document is a
    non-empty list; each item a (modality, value) pair of a modality in `modalities` with a non-empty value."""
    allowed = sorted(set(modalities))
    if isinstance(doc, (str, bytes)) or not isinstance(doc, Sequence):
        raise DatasetOutputError(f"{where}: a document must be a list of (modality, value) items, got {type(doc).__name__}. "
                                 "Yield e.g. [DocItem('text', 'a caption'), DocItem('image', array)].")
    if not doc:
        raise DatasetOutputError(f"{where}: an empty document (no items); every document needs at least one item. Drop it "
                                 "from the data set.")
    out = []
    for k, item in enumerate(doc):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise DatasetOutputError(f"{where}, item {k}: expected a (modality, value) pair such as DocItem('text', ...), got "
                                     f"{type(item).__name__}.")
        modality, value = item
        if modality not in allowed:
            raise DatasetOutputError(f"{where}, item {k}: modality {modality!r} has no role in this document task (its roles "
                                     f"take {', '.join(allowed)}). Add a role of a {modality} codec to the task's `document`, "
                                     "or drop such items.")
        if _empty(value):
            raise DatasetOutputError(f"{where}, item {k} ({modality}): the item is empty; every item needs content "
                                     "(drop the item, or the document).")
        out.append(DocItem(modality, value))
    return out


def flatten(documents: Sequence[Any], roles: Mapping[str, str], where: str
            ) -> tuple[dict[str, list], list[list[tuple[str, int]]]]:
    """Documents -> (role -> its items in order, each document as [(role, index into that role's items)]).

    `roles` maps modality -> role (tasks.document_roles)."""
    items: dict[str, list] = {r: [] for r in roles.values()}
    structure = []
    for i, doc in enumerate(documents):
        entry = []
        for item in as_document(doc, roles, f"{where}, document {i}"):
            role = roles[item.modality]
            entry.append((role, len(items[role])))
            items[role].append(item.value)
        structure.append(entry)
    return items, structure
