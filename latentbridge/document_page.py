"""Generated documents as HTML pages: text inline, images inline, audio as players with a link, other items as
their codec writes them (`latentbridge sample --document`, the document evaluators)."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from latentbridge.codecs import Codec

IMAGE = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
AUDIO = {".wav", ".flac", ".mp3", ".ogg"}

STYLE = """body{font-family:sans-serif;max-width:46em;margin:2em auto;line-height:1.45}
.item{margin:.6em 0;padding:.4em .6em;border-left:4px solid #ccc}.given{border-color:#9ab;background:#f4f7f9}
.made{border-color:#6a6}.meta{color:#777;font-size:.8em}img{image-rendering:pixelated;width:160px}
.end{color:#777;font-style:italic}"""


def _item_html(item: Any, modality: str, codec: Codec | None, folder: Path, name: str) -> str:
    if isinstance(item, (str, int, float)):  # plain values inline
        return f"<p>{html.escape(str(item))}</p>"
    if codec is not None:
        try:
            paths = codec.write_items([item], folder, [name])
        except NotImplementedError:
            paths = []
        own = [p for p in paths if name in Path(p).stem]  # the item's own file, not a codec's grid of everything written
        parts = []
        for p in own or paths:
            rel = html.escape(f"{folder.name}/{Path(p).relative_to(folder).as_posix()}")
            suffix = Path(p).suffix.lower()
            if suffix in IMAGE:
                parts.append(f'<img src="{rel}" alt="{html.escape(modality)} item">')
            elif suffix in AUDIO:
                parts.append(f'<audio controls src="{rel}"></audio> <a href="{rel}">{html.escape(Path(p).name)}</a>')
            else:
                parts.append(f'<a href="{rel}">{html.escape(Path(p).name)}</a>')
        if parts:
            return " ".join(parts)
    text = repr(item.tolist()) if hasattr(item, "tolist") else repr(item)
    return f"<code>{html.escape(text[:400])}</code>"


def write_document_pages(documents: Sequence[tuple[Sequence[tuple[str, Any]], int, bool]], codecs: Mapping[str, Codec],
                         directory: str | Path, title: str = "documents") -> list[Path]:
    """Write one HTML page per document and an index.html into `directory` (replacing what an earlier call left).

    `documents`: (items as (modality, value), how many of them were given as the prefix, whether the model ended
    it); `codecs`: modality -> the codec that writes its items as files. Returns the pages, index first."""
    directory = Path(directory)
    if directory.is_dir():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    pages = []
    for i, (items, prefix, ended) in enumerate(documents):
        folder = directory / f"doc_{i:03d}_files"
        body = []
        for k, (modality, value) in enumerate(items):
            kind = "given" if k < prefix else "made"
            body.append(f'<div class="item {kind}"><div class="meta">{k}: {html.escape(modality)} '
                        f'({"prefix" if k < prefix else "generated"})</div>'
                        f"{_item_html(value, modality, codecs.get(modality), folder, f'item_{k:02d}')}</div>")
        body.append(f'<p class="end">{"end of document (the model ended it)" if ended else "item budget reached"}</p>')
        page = directory / f"doc_{i:03d}.html"
        page.write_text(f"<!doctype html><meta charset=utf-8><title>{html.escape(title)} {i}</title><style>{STYLE}</style>"
                        f"<h1>{html.escape(title)} {i}</h1>{''.join(body)}\n")
        pages.append(page)
    links = "".join(f'<li><a href="{p.name}">{p.stem}</a>: {len(d[0])} items ({len(d[0]) - d[1]} generated)'
                    f'{"" if d[2] else ", cut by the budget"}</li>' for p, d in zip(pages, documents))
    index = directory / "index.html"
    index.write_text(f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style>"
                     f"<h1>{html.escape(title)}</h1><ul>{links}</ul>\n")
    return [index, *pages]
