"""The generic data sets: your own files, read as streams (latentbridge.data.stream), registered by the core.

    imagefolder   images (PNG/JPEG/WebP) + captions from metadata.jsonl / metadata.csv or a sidecar .txt per image
    audiofolder   clips (WAV/FLAC/OGG) + transcripts, the same conventions
    text          .txt (an item per line or per paragraph), .jsonl, .csv, .parquet with a chosen column
    documents     interleaved documents, a JSON line each: [{"text": ...}, {"image": path}, {"audio": path}, ...]
    hf            a `datasets` dataset saved with save_to_disk, or Parquet/Arrow files loaded through `datasets`
    webdataset    tar shards (brace patterns), fields by file extension

Each maps item fields to what codec roles read with `fields` ({field: source}); a codec role takes the field
named like the role, or else like its codec's modality. Images come out as uint8 [S, S, 3] arrays (centre
crop, Lanczos resize to `image_size`), clips as mono float32 waves at `sample_rate`, texts as strings.
Reading needs `pip install 'latentbridge[data]'` (Pillow, soundfile, torchaudio, datasets, webdataset).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from latentbridge.data.stream import BadRecord, Record, Shard, StreamingDataset, StreamOptions, expand_paths
from latentbridge.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
TEXT_SUFFIXES = (".txt", ".text")


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"reading this data set needs the Python package '{module}': pip install 'latentbridge[data]'.") from None


# -- decoders (run in loader workers) ----------------------------------------------------------------------


def decode_image(source: bytes | str, size: int) -> np.ndarray:
    """Any image Pillow reads -> RGB, centre-cropped to a square, Lanczos-resized to size x size, uint8."""
    Image = _need("PIL.Image")
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.load()
        im = im.convert("RGB")
    w, h = im.size
    if not w or not h:
        raise BadRecord("empty image")
    side = min(w, h)
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return np.array(im.resize((size, size), Image.LANCZOS), dtype=np.uint8)  # a writable copy


def decode_audio(source: bytes | str, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    """Any clip soundfile reads -> mono float32 at sample_rate (torchaudio's resampler), cut to max_seconds."""
    sf = _need("soundfile")
    wave, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32", always_2d=True)
    if wave.size == 0:
        raise BadRecord("empty clip")
    mono = wave.mean(axis=1)
    if sr != sample_rate:
        import torch

        AF = _need("torchaudio.functional")
        mono = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), sr, sample_rate).numpy()
    if max_seconds:
        mono = mono[: int(max_seconds * sample_rate)]
    if not np.isfinite(mono).all():
        raise BadRecord("clip holds NaN or inf samples")
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_text(source: bytes | str) -> str:
    text = source.decode("utf-8") if isinstance(source, bytes) else source
    if not isinstance(text, str):
        raise BadRecord(f"expected text, found {type(text).__name__}")
    text = text.strip()
    if not text:
        raise BadRecord("empty text")
    return text


@dataclasses.dataclass
class MediaOptions:
    image_size: int = 32
    """Side of the square images items become (the image codec's image_size)."""
    sample_rate: int = 16000
    """Sample rate clips are resampled to (the audio codec's sample_rate)."""
    max_seconds: float | None = None
    """Cut clips to this length (null: keep; the audio codec cuts at its own max_seconds)."""


def _line_offsets(path: str, paragraphs: bool = False) -> np.ndarray:
    """Byte offsets of the starts of non-blank lines (or of paragraphs: runs of lines between blank lines), plus the end."""
    starts = []
    pos, prev_blank = 0, True
    with open(path, "rb") as f:
        for line in f:
            blank = not line.strip()
            if not blank and (not paragraphs or prev_blank):
                starts.append(pos)
            prev_blank = blank
            pos += len(line)
    starts.append(pos)
    return np.asarray(starts, dtype=np.int64)


def _line_shards(path: str, offsets: np.ndarray, shard_size: int) -> list[Shard]:
    n = len(offsets) - 1
    return [Shard(path, (int(offsets[a]), int(offsets[min(n, a + shard_size)]), a)) for a in range(0, n, shard_size)]


def _read_units(shard: Shard, paragraphs: bool) -> Iterator[tuple[int, bytes]]:
    """(unit number, bytes) of a line shard: each non-blank line, or each paragraph."""
    start, stop, first = shard.part
    with open(shard.path, "rb") as f:
        f.seek(start)
        chunk = f.read(stop - start)
    lines = chunk.splitlines(keepends=True)
    i, unit = first, []
    for line in lines:
        if line.strip():
            if not paragraphs:
                yield i, line
                i += 1
            else:
                unit.append(line)
        elif unit:
            yield i, b"".join(unit)
            i, unit = i + 1, []
    if unit:
        yield i, b"".join(unit)


# -- image and audio folders --------------------------------------------------------------------------------


@dataclasses.dataclass
class FolderOptions(StreamOptions, MediaOptions):
    path: str = ""
    """The folder (its metadata.jsonl / metadata.csv, or files with a sidecar .txt each)."""
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    """Item field -> metadata column; the media field's column names the file (`file_name`). Default: {<media>:
    file_name, text: text}. With sidecar files, a text field reads <file stem>.txt."""
    shard_size: int = 1000
    """Items per shard (shards are what processes and loader workers split between them)."""


class _MediaFolder(StreamingDataset):
    media: str
    suffixes: tuple[str, ...]
    config_class = FolderOptions

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        c = self.config
        if not c.path:
            raise ConfigError(f"data set '{self.name}': set data.config.path to the folder of your {self.media} files.")
        self.root = Path(c.path)
        if not self.root.is_dir():
            raise ConfigError(f"data set '{self.name}': data.config.path {c.path!r} is not a folder.")
        self.columns = dict(c.fields) or {self.media: "file_name", "text": "text"}
        media = [f for f, col in self.columns.items() if col == "file_name"]
        if len(media) != 1:
            raise ConfigError(f"data set '{self.name}': data.config.fields {self.columns} needs exactly one field whose column is "
                              f"file_name (the {self.media} file), e.g. {{{self.media}: file_name, text: text}}.")
        self.media_field = media[0]
        self.fields = {f: f for f in self.columns}
        self.metadata = next((self.root / m for m in ("metadata.jsonl", "metadata.csv") if (self.root / m).is_file()), None)
        texts = [f for f in self.columns if f != self.media_field]
        if self.metadata is None and len(texts) > 1:
            raise ConfigError(f"data set '{self.name}': {self.root} has no metadata.jsonl or metadata.csv, and sidecar .txt "
                              f"files hold one text; fields {texts} need a metadata file with those columns.")
        self.header: list[str] | None = None
        if self.metadata is not None and self.metadata.suffix == ".csv":
            with open(self.metadata, newline="", encoding="utf-8") as f:
                self.header = next(csv.reader(f), None)
            missing = [col for col in self.columns.values() if col not in (self.header or [])]
            if missing:
                raise ConfigError(f"data set '{self.name}': {self.metadata} has columns {self.header}; data.config.fields "
                                  f"needs {missing}. Map fields to its columns.")

    def describe(self) -> str:
        return f"folder {str(self.root)!r}"

    def list_shards(self, split: str | None) -> list[Shard]:
        size = self.config.shard_size
        if self.metadata is not None:
            offsets = _line_offsets(str(self.metadata))
            if self.header is not None:  # the header line is no item
                offsets = offsets[1:]
            return _line_shards(str(self.metadata), offsets, size)
        files = [os.path.relpath(p, self.root) for p in expand_paths(self.root, None, self.suffixes)]
        return [Shard(str(self.root), tuple(files[a : a + size])) for a in range(0, len(files), size)]

    def in_split_files(self, rel: str, split: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatch(rel, p) for p in str(self.config.split_files.get(split, "")).split(";") if p)

    def records(self, shard: Shard) -> Iterator[Record]:
        if self.metadata is None:
            for rel in shard.part:
                yield Record(rel, {"file_name": rel}, str(self.root / rel))
            return
        for i, line in _read_units(shard, paragraphs=False):
            where = f"{self.metadata}:{i + 1 + (self.header is not None)}"
            try:
                if self.header is not None:
                    rows = list(csv.reader([line.decode("utf-8")]))
                    if len(rows) != 1 or len(rows[0]) != len(self.header):
                        raise ValueError(f"{len(rows[0]) if rows else 0} columns where the header has {len(self.header)} "
                                         "(a quoted value spanning lines? use metadata.jsonl)")
                    row = dict(zip(self.header, rows[0]))
                else:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("a line is not a JSON object")
                rel = str(row["file_name"])
            except (ValueError, KeyError, UnicodeDecodeError) as err:
                yield Record(where, BadRecord(f"{where}: unreadable metadata row ({type(err).__name__}: {err})"), where)
                continue
            yield Record(rel, row, str(self.root / rel))

    def split_records(self, shard: Shard, split: str) -> Iterator[Record]:
        if self.config.split_files is None:
            yield from super().split_records(shard, split)
            return
        for rec in super().split_records(shard, split):
            if isinstance(rec.data, BadRecord) or self.in_split_files(rec.key, split):
                yield rec

    def shards(self, split: str) -> list[Shard]:
        if split not in self._shards:  # files per split filter records, not shards: every split reads the listing
            if self.config.split_files is not None and split not in self.config.split_files:
                self._shards[split] = []
            else:
                shards = self.list_shards(None)
                if not shards:
                    raise ConfigError(f"data set '{self.name}': no {self.media} files found in {self.describe()} "
                                      f"({', '.join(self.suffixes)}, or a metadata file). Check data.config.path.")
                self._shards[split] = shards
        return self._shards[split]

    def decode(self, record: Record) -> dict[str, Any]:
        row = record.data
        path = self.root / row["file_name"]
        if not path.is_file():
            raise BadRecord(f"missing file ({row['file_name']} is listed in the metadata)")
        out = {self.media_field: self.decode_media(str(path))}
        for f, col in self.columns.items():
            if f == self.media_field:
                continue
            if self.metadata is None:
                side = path.with_suffix(".txt")
                if not side.is_file():
                    raise BadRecord(f"no caption file {side.name} beside it")
                out[f] = decode_text(side.read_bytes())
            else:
                if col not in row:
                    raise BadRecord(f"metadata row has no column {col!r} (it has {sorted(row)})")
                out[f] = decode_text(str(row[col]))
        return out

    def decode_media(self, path: str) -> Any:
        raise NotImplementedError


class ImageFolder(_MediaFolder):
    """A folder of images with captions (the `datasets` imagefolder layout): metadata.jsonl / metadata.csv with a
    file_name column and text columns, or a sidecar <stem>.txt per image."""

    name = "imagefolder"
    media, suffixes = "image", IMAGE_SUFFIXES
    fields = {"image": "image", "text": "text"}

    def decode_media(self, path: str) -> Any:
        return decode_image(path, self.config.image_size)


class AudioFolder(_MediaFolder):
    """A folder of clips (WAV/FLAC/OGG) with transcripts: metadata.jsonl / metadata.csv or a sidecar <stem>.txt per clip."""

    name = "audiofolder"
    media, suffixes = "audio", AUDIO_SUFFIXES
    fields = {"audio": "audio", "text": "text"}

    def decode_media(self, path: str) -> Any:
        return decode_audio(path, self.config.sample_rate, self.config.max_seconds)


# -- text ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TextOptions(StreamOptions):
    path: str = ""
    """A file, a folder or a glob of .txt / .jsonl / .csv / .parquet files."""
    format: Literal["auto", "txt", "jsonl", "csv", "parquet"] = "auto"
    """auto: by each file's suffix."""
    column: str = "text"
    """The column (jsonl, csv, parquet) holding the text."""
    unit: Literal["line", "paragraph"] = "line"
    """.txt files: one item per non-blank line, or per paragraph (lines between blank lines)."""
    field: str = "text"
    """The item field the texts go to (codec roles read the field named like them, else `text`)."""
    shard_size: int = 1000
    """Lines per shard (Parquet files shard by row group)."""


class TextFiles(StreamingDataset):
    """A text corpus: .txt (an item per line or per paragraph), .jsonl, .csv or .parquet with a chosen column."""

    name = "text"
    config_class = TextOptions
    fields = {"text": "text"}

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        c = self.config
        if not c.path:
            raise ConfigError("data set 'text': set data.config.path to your text file(s) (.txt, .jsonl, .csv, .parquet).")
        self.fields = {"text": c.field}
        self.files = expand_paths(c.path, None, (".txt", ".text", ".jsonl", ".json", ".csv", ".parquet"))
        if not self.files:
            raise ConfigError(f"data set 'text': no .txt, .jsonl, .csv or .parquet files at {c.path!r}. Check data.config.path.")
        self.root = c.path if os.path.isdir(c.path) else os.path.dirname(self.files[0])

    def format_of(self, path: str) -> str:
        if self.config.format != "auto":
            return self.config.format
        suffix = Path(path).suffix.lower()
        return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(suffix, "txt")

    def list_shards(self, split: str | None) -> list[Shard]:
        files = self.files
        if split is not None:
            import fnmatch

            pats = [p for p in self.config.split_files[split].split(";") if p]
            files = [f for f in files if any(fnmatch.fnmatch(os.path.relpath(f, self.root), p) for p in pats)]
        out: list[Shard] = []
        for path in files:
            fmt = self.format_of(path)
            if fmt == "parquet":
                pq = _need("pyarrow.parquet")
                try:
                    groups = pq.ParquetFile(path).metadata.num_row_groups
                except Exception as err:  # noqa: BLE001 -- a damaged file is this file's problem, named with its path
                    raise ConfigError(f"data set 'text': cannot read {path}: {err}") from None
                out += [Shard(path, ("rowgroup", g)) for g in range(groups)]
            else:
                offsets = _line_offsets(path, paragraphs=fmt == "txt" and self.config.unit == "paragraph")
                if fmt == "csv":
                    offsets = offsets[1:]
                out += _line_shards(path, offsets, self.config.shard_size)
        return out

    def records(self, shard: Shard) -> Iterator[Record]:
        fmt = self.format_of(shard.path)
        if fmt == "parquet":
            pq = _need("pyarrow.parquet")
            pf = pq.ParquetFile(shard.path)
            if self.config.column not in pf.schema_arrow.names:
                raise BadRecord(f"no column {self.config.column!r} (columns: {pf.schema_arrow.names}); set data.config.column")
            values = pf.read_row_group(shard.part[1], columns=[self.config.column]).column(0).to_pylist()
            for i, v in enumerate(values):
                yield Record(f"{os.path.relpath(shard.path, self.root)}:{shard.part[1]}:{i}", v, f"{shard.path} (row group {shard.part[1]}, row {i})")
            return
        header = None
        if fmt == "csv":
            with open(shard.path, newline="", encoding="utf-8", errors="replace") as f:
                header = next(csv.reader(f), [])
        for i, raw in _read_units(shard, paragraphs=fmt == "txt" and self.config.unit == "paragraph"):
            where = f"{shard.path}:{i + 1 + (header is not None)}"
            yield Record(f"{os.path.relpath(shard.path, self.root)}:{i}", (fmt, raw, header), where)

    def decode(self, record: Record) -> dict[str, Any]:
        if not isinstance(record.data, tuple):
            return {self.config.field: decode_text(record.data if isinstance(record.data, (str, bytes)) else str(record.data))}
        fmt, raw, header = record.data
        text = raw.decode("utf-8")
        col = self.config.column
        if fmt == "jsonl":
            row = json.loads(text)
            if not isinstance(row, dict) or col not in row:
                raise BadRecord(f"no {col!r} in this JSON line (set data.config.column)")
            text = row[col]
        elif fmt == "csv":
            if col not in header:
                raise BadRecord(f"no column {col!r} in the header {header} (set data.config.column)")
            values = next(csv.reader([text]))
            if len(values) != len(header):
                raise BadRecord(f"{len(values)} columns where the header has {len(header)}")
            text = values[header.index(col)]
        elif self.config.unit == "paragraph":
            text = " ".join(text.split())
        return {self.config.field: decode_text(text)}


# -- documents: interleaved items of several modalities ---------------------------------------------------------


@dataclasses.dataclass
class DocumentOptions(StreamOptions, MediaOptions):
    path: str = ""
    """A .jsonl file, a folder or a glob of them: one document per line, e.g.
    {"document": [{"text": "a cat."}, {"image": "cats/1.png"}, {"text": "it sleeps."}, {"audio": "purr.wav"}]}
    (media paths relative to the .jsonl file's folder)."""
    key: str = "document"
    """The key of each line that holds the document's items."""
    shard_size: int = 1000
    """Lines per shard."""


class JsonlDocuments(StreamingDataset):
    """Interleaved documents from JSON lines: each item one of {"text": str}, {"image": path}, {"audio": path}; a line
    that is not such a document (no items, an unknown kind, a missing or unreadable file) is a bad record, skipped and
    counted (or, with on_error: fail, stops training naming the line). One field, `document` (docs/documents.md)."""

    name = "documents"
    config_class = DocumentOptions
    fields = {"document": "document"}
    KINDS = ("text", "image", "audio")

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        c = self.config
        if not c.path:
            raise ConfigError("data set 'documents': set data.config.path to your .jsonl file(s) of documents.")
        self.files = expand_paths(c.path, None, (".jsonl", ".json"))
        if not self.files:
            raise ConfigError(f"data set 'documents': no .jsonl files at {c.path!r}. Check data.config.path.")
        self.root = c.path if os.path.isdir(c.path) else os.path.dirname(self.files[0])

    def list_shards(self, split: str | None) -> list[Shard]:
        files = self.files
        if split is not None:
            import fnmatch

            pats = [p for p in self.config.split_files[split].split(";") if p]
            files = [f for f in files if any(fnmatch.fnmatch(os.path.relpath(f, self.root), p) for p in pats)]
        return [shard for path in files for shard in _line_shards(path, _line_offsets(path), self.config.shard_size)]

    def records(self, shard: Shard) -> Iterator[Record]:
        for i, raw in _read_units(shard, paragraphs=False):
            yield Record(f"{os.path.relpath(shard.path, self.root)}:{i}", (shard.path, raw), f"{shard.path}:{i + 1}")

    def decode(self, record: Record) -> dict[str, Any]:
        from latentbridge.data.document import DocItem

        path, raw = record.data
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError as err:
            raise BadRecord(f"not a JSON line ({err})") from None
        items = row.get(self.config.key) if isinstance(row, dict) else None
        if not isinstance(items, list) or not items:
            raise BadRecord(f"no items under {self.config.key!r} (a non-empty list of {{kind: value}}; set data.config.key)")
        c, folder, doc = self.config, os.path.dirname(path), []
        for k, item in enumerate(items):
            if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in self.KINDS:
                raise BadRecord(f"item {k} is {item!r}; each item is one of {{'text': ...}}, {{'image': path}}, {{'audio': path}}")
            kind, value = next(iter(item.items()))
            if kind == "text":
                doc.append(DocItem("text", decode_text(str(value))))
                continue
            file = os.path.join(folder, str(value))
            if not os.path.isfile(file):
                raise BadRecord(f"item {k}: no file {file}")
            decoded = decode_image(file, c.image_size) if kind == "image" else decode_audio(file, c.sample_rate, c.max_seconds)
            doc.append(DocItem(kind, decoded))
        return {"document": doc}


# -- Hugging Face datasets ------------------------------------------------------------------------------------


@dataclasses.dataclass
class HFOptions(StreamOptions, MediaOptions):
    path: str = ""
    """A folder written by Dataset.save_to_disk / DatasetDict.save_to_disk, or Parquet / Arrow files (glob)."""
    fields: dict[str, str] = dataclasses.field(default_factory=lambda: {"text": "text"})
    """Item field -> column. Image columns become images, Audio columns clips, string columns texts."""
    shard_size: int = 1000
    """Rows per shard."""


class HFDataset(StreamingDataset):
    """A Hugging Face `datasets` dataset from local files only: save_to_disk folders (a DatasetDict's splits are used
    as the splits), or Parquet / Arrow files. Memory-mapped: rows are read as they stream."""

    name = "hf"
    config_class = HFOptions
    fields = {"text": "text"}

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        c = self.config
        if not c.path:
            raise ConfigError("data set 'hf': set data.config.path to a save_to_disk folder or Parquet/Arrow files.")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        ds = _need("datasets")
        try:
            if os.path.isdir(c.path) and any((Path(c.path) / m).is_file() for m in ("dataset_dict.json", "state.json")):
                loaded = ds.load_from_disk(c.path)
            else:
                files = expand_paths(c.path, None, (".parquet", ".arrow"))
                if not files:
                    raise ConfigError(f"data set 'hf': {c.path!r} is neither a save_to_disk folder nor Parquet/Arrow files.")
                kind = "parquet" if files[0].endswith(".parquet") else "arrow"
                loaded = ds.load_dataset(kind, data_files={"train": files}, split="train")
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 -- datasets raises many types for a bad folder
            raise ConfigError(f"data set 'hf': cannot load {c.path!r} with datasets: {type(err).__name__}: {err}") from None
        self.parts = dict(loaded) if isinstance(loaded, ds.DatasetDict) else {"all": loaded}
        self.given_splits = isinstance(loaded, ds.DatasetDict)
        self.fields = {f: f for f in c.fields}
        for part_name, d in self.parts.items():
            missing = [col for col in c.fields.values() if col not in d.column_names]
            if missing:
                raise ConfigError(f"data set 'hf': {c.path} ({part_name}) has columns {d.column_names}; data.config.fields "
                                  f"maps to {missing}. Map each field to one of its columns.")
            casts = {col: type(feat)(decode=False) for col, feat in d.features.items()
                     if col in c.fields.values() and type(feat).__name__ in ("Image", "Audio")}
            for col, feat in casts.items():
                d = d.cast_column(col, feat)
            self.parts[part_name] = d
        if self.given_splits and "train" not in self.parts:
            raise ConfigError(f"data set 'hf': {c.path} holds splits {sorted(self.parts)}; one must be `train`.")

    def describe(self) -> str:
        return f"datasets at {self.config.path!r}"

    def shards(self, split: str) -> list[Shard]:
        if split not in self._shards:
            if self.given_splits:
                names = [split] if split in self.parts else []
            else:
                names = ["all"]
            size = self.config.shard_size
            self._shards[split] = [Shard(n, (a, min(len(self.parts[n]), a + size))) for n in names
                                   for a in range(0, len(self.parts[n]), size)]
            if split == "train" and not self._shards[split]:
                raise ConfigError(f"data set 'hf': no training rows in {self.describe()}.")
        return self._shards[split]

    def split_records(self, shard: Shard, split: str) -> Iterator[Record]:
        if self.given_splits:
            yield from self.records(shard)
            return
        yield from super().split_records(shard, split)

    def records(self, shard: Shard) -> Iterator[Record]:
        start, stop = shard.part
        for i in range(start, stop):
            yield Record(f"{shard.path}:{i}", (shard.path, i), f"{self.config.path} ({shard.path}, row {i})")

    def decode(self, record: Record) -> dict[str, Any]:
        part, i = record.data
        d = self.parts[part]
        row = d[i]
        out = {}
        for f, col in self.config.fields.items():
            value, kind = row[col], type(d.features[col]).__name__
            if kind in ("Image", "Audio"):
                if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
                    raise BadRecord(f"column {col!r} holds no {kind.lower()}")
                src = value.get("bytes") or value["path"]
                out[f] = (decode_image(src, self.config.image_size) if kind == "Image"
                          else decode_audio(src, self.config.sample_rate, self.config.max_seconds))
            elif isinstance(value, str):
                out[f] = decode_text(value)
            else:
                raise BadRecord(f"column {col!r} holds {type(value).__name__}; fields read images, audio or text")
        return out

    def key(self) -> str:
        import hashlib

        h = hashlib.sha256(json.dumps([self.name, dataclasses.asdict(self.config)], sort_keys=True, default=str).encode())
        for n, d in sorted(self.parts.items()):
            h.update(f"{n}|{len(d)}|{d._fingerprint}".encode())
        return h.hexdigest()[:12]


# -- WebDataset ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class WebDatasetOptions(StreamOptions, MediaOptions):
    path: str = ""
    """Tar shards: a brace pattern (data/shard-{000000..000099}.tar), a glob, or a folder of .tar files."""
    fields: dict[str, str] = dataclasses.field(default_factory=lambda: {"image": "jpg;png;webp", "text": "txt"})
    """Item field -> file extension(s) in the tar (first present wins, ';'-separated); decoded by extension."""


class WebDatasetShards(StreamingDataset):
    """WebDataset tar shards read with PyPI `webdataset`'s tar iterators: each sample's files share a key, fields by
    extension (jpg/png/webp images, wav/flac/ogg clips, txt/json texts)."""

    name = "webdataset"
    config_class = WebDatasetOptions
    fields = {"image": "image", "text": "text"}

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        c = self.config
        if not c.path:
            raise ConfigError("data set 'webdataset': set data.config.path to your tar shards, e.g. data/shard-{000..009}.tar.")
        self.fields = {f: f for f in c.fields}
        self.exts = {f: [e.strip().lower().lstrip(".") for e in v.split(";") if e.strip()] for f, v in c.fields.items()}
        self.files = expand_paths(c.path, None, (".tar",))
        if not self.files:
            raise ConfigError(f"data set 'webdataset': no .tar shards at {c.path!r}. Check data.config.path.")
        self.root = c.path if os.path.isdir(c.path) else os.path.dirname(self.files[0])

    def list_shards(self, split: str | None) -> list[Shard]:
        files = self.files
        if split is not None:
            import fnmatch

            pats = [p for p in self.config.split_files[split].split(";") if p]
            files = [f for f in files if any(fnmatch.fnmatch(os.path.relpath(f, self.root), p) for p in pats)]
        return [Shard(f) for f in files]

    def records(self, shard: Shard) -> Iterator[Record]:
        ti = _need("webdataset.tariterators")
        wanted = {e for v in self.exts.values() for e in v}
        with open(shard.path, "rb") as stream:
            files = ({**f, "__url__": shard.path} for f in ti.tar_file_iterator(stream))
            for sample in ti.group_by_keys(files):
                data = {k: v for k, v in sample.items() if k in wanted}
                yield Record(f"{os.path.relpath(shard.path, self.root)}/{sample['__key__']}", data,
                             f"{shard.path} (sample {sample['__key__']})")

    def decode(self, record: Record) -> dict[str, Any]:
        out = {}
        for f, exts in self.exts.items():
            ext = next((e for e in exts if e in record.data), None)
            if ext is None:
                raise BadRecord(f"no file with extension {' or '.join(exts)} for field {f!r} (the sample has "
                                f"{sorted(record.data) or 'none of the mapped ones'})")
            raw = record.data[ext]
            if ext in ("jpg", "jpeg", "png", "webp"):
                out[f] = decode_image(raw, self.config.image_size)
            elif ext in ("wav", "flac", "ogg"):
                out[f] = decode_audio(raw, self.config.sample_rate, self.config.max_seconds)
            elif ext == "json":
                value = json.loads(raw)
                out[f] = decode_text(value if isinstance(value, str) else str(value.get("text", "")) if isinstance(value, dict) else str(value))
            else:
                out[f] = decode_text(raw)
        return out


GENERIC_DATASETS = (ImageFolder, AudioFolder, TextFiles, JsonlDocuments, HFDataset, WebDatasetShards)
