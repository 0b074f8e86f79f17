"""A run as a manifest and immutable parts: what the DynamoDB and Table Storage run stores share.

A run version is stored as a head (the version, the manifest and, when it fits, the run header:
the Run without its waves) plus parts. A part is one wave's zlib-compressed JSON, or the
header's when the head cannot hold it, split into chunks of at most `PartLayout.chunk_bytes`
under keys built from the part's *tag* (``v<version>-<random>``, fresh for each save). The
manifest names, per wave and for an out-of-head header, the tag and the chunk count. A save
writes only the waves that changed (the others keep their manifest entry); a load reads only
the parts that the version it holds already does not have.

The stores keep their own storage: item and row shapes, transactions, reads, limits.
"""

from __future__ import annotations

import json
import secrets
import zlib
from collections.abc import Callable, Mapping
from typing import NamedTuple

from patchpilot.engine.run import Run, WaveState


class Part(NamedTuple):
    """Where one part of a run version lives: the tag it was written under, in `chunks` rows or items."""

    tag: str
    chunks: int


class Manifest(NamedTuple):
    header: Part | None  # None: the header is in the head
    waves: tuple[Part, ...]

    def dump(self) -> str:
        header = None if self.header is None else [self.header.tag, self.header.chunks]
        return json.dumps({"header": header, "waves": [[p.tag, p.chunks] for p in self.waves]}, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        header = None if data["header"] is None else Part(str(data["header"][0]), int(data["header"][1]))
        return cls(header, tuple(Part(str(tag), int(chunks)) for tag, chunks in data["waves"]))


class Version(NamedTuple):
    """A run version a store holds: the Run and the manifest of its parts."""

    run: Run
    manifest: Manifest


class Encoded(NamedTuple):
    """A run version as a store writes it."""

    manifest: Manifest
    chunks: list[tuple[str, bytes]]  # the new parts, as (key, compressed bytes) chunks to write
    header: bytes | None  # the compressed header when it stays in the head


class PartLayout(NamedTuple):
    """How one store keys and sizes the parts of a run. `wave_key` is formatted with `position`,
    `tag` and `chunk`; `header_key` with `tag` and `chunk`. `fits_in_head(header, manifest)`
    says whether the compressed header stays in the head (`manifest` then names no header part)."""

    wave_key: str
    header_key: str
    chunk_bytes: int
    fits_in_head: Callable[[bytes, Manifest], bool]

    def wave(self, position: int, tag: str, chunk: int) -> str:
        return self.wave_key.format(position=position, tag=tag, chunk=chunk)

    def header(self, tag: str, chunk: int) -> str:
        return self.header_key.format(tag=tag, chunk=chunk)

    def keys(self, manifest: Manifest) -> list[str]:
        """The keys of every part `manifest` names."""
        keys = [self.wave(i, p.tag, n) for i, p in enumerate(manifest.waves) for n in range(p.chunks)]
        if manifest.header is not None:
            keys.extend(self.header(manifest.header.tag, n) for n in range(manifest.header.chunks))
        return keys

    def superseded(self, old: Manifest, new: Manifest) -> list[str]:
        """The keys of the parts `old` names and `new` no longer does."""
        keep = set(self.keys(new))
        return [key for key in self.keys(old) if key not in keep]

    def encode(self, run: Run, previous: Version | None = None) -> Encoded:
        """`run` as new parts and its manifest. Saved over `previous`, a wave that is the very
        same object as `previous`'s (`decide` changed it not) keeps its manifest entry."""
        tag = f"v{run.version}-{secrets.token_hex(4)}"
        chunks: list[tuple[str, bytes]] = []
        entries: list[Part] = []
        for position, wave in enumerate(run.waves):
            if (
                previous is not None
                and position < len(previous.run.waves)
                and position < len(previous.manifest.waves)
                and wave is previous.run.waves[position]
            ):
                entries.append(previous.manifest.waves[position])
                continue
            data = split(compress(wave.model_dump_json()), self.chunk_bytes)
            entries.append(Part(tag, len(data)))
            chunks.extend((self.wave(position, tag, n), chunk) for n, chunk in enumerate(data))
        header = compress(run.model_dump_json(exclude={"waves"}))
        manifest = Manifest(None, tuple(entries))
        if self.fits_in_head(header, manifest):
            return Encoded(manifest, chunks, header)
        data = split(header, self.chunk_bytes)
        chunks.extend((self.header(tag, n), chunk) for n, chunk in enumerate(data))
        return Encoded(Manifest(Part(tag, len(data)), tuple(entries)), chunks, None)

    def decode(
        self,
        manifest: Manifest,
        head_header: Callable[[], bytes],
        fetch: Callable[[list[str]], Mapping[str, bytes]],
        cached: Version | None,
    ) -> Run | None:
        """The Run that `manifest` names, reusing (as the very same objects) the waves of
        `cached` whose part is unchanged. `fetch(keys)` reads the other parts (those that exist,
        by key); `head_header()` is the compressed header when it is in the head. None when a
        part is gone (superseded meanwhile)."""
        reused: dict[int, WaveState] = {}
        if cached is not None:
            for position, part in enumerate(manifest.waves):
                if position < len(cached.manifest.waves) and cached.manifest.waves[position] == part:
                    reused[position] = cached.run.waves[position]
        wanted = [
            self.wave(position, part.tag, n)
            for position, part in enumerate(manifest.waves)
            if position not in reused
            for n in range(part.chunks)
        ]
        if manifest.header is not None:
            wanted.extend(self.header(manifest.header.tag, n) for n in range(manifest.header.chunks))
        fetched = fetch(wanted)
        if len(fetched) < len(wanted):
            return None
        if manifest.header is None:
            header = zlib.decompress(head_header())
        else:
            part = manifest.header
            header = zlib.decompress(b"".join(fetched[self.header(part.tag, n)] for n in range(part.chunks)))
        waves: list[WaveState] = []
        for position, part in enumerate(manifest.waves):
            wave = reused.get(position)
            if wave is None:
                data = b"".join(fetched[self.wave(position, part.tag, n)] for n in range(part.chunks))
                wave = WaveState.model_validate_json(zlib.decompress(data))
            waves.append(wave)
        return Run.model_validate_json(_with_no_waves(header)).model_copy(update={"waves": tuple(waves)})


def compress(text: str) -> bytes:
    return zlib.compress(text.encode(), 6)


def split(data: bytes, size: int) -> list[bytes]:
    """`data` in chunks of at most `size` bytes; one empty chunk for no data."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _with_no_waves(header: bytes) -> bytes:
    """The JSON of the Run with an empty `waves`, which the loaded waves then replace."""
    assert header.endswith(b"}") and len(header) > 2, "a run header is a non-empty JSON object"
    return header[:-1] + b',"waves":[]}'
