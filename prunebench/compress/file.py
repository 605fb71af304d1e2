"""The compressed file (`export.compressed=true`, checkpoints/final.pbz): Deep Compression's
storage (Han et al. 2016, sec. 4-5), measured byte for byte.

Per quantized layer, three sections:
    positions  relative offsets between consecutive nonzeros of the flattened weight, each at
               the layer's `index_bits`; a gap too wide for them is bridged by filler entries
               (the largest value, 2^index_bits - 1, meaning "advance that far, no weight")
    codes      one code per nonzero at `compress.bits` (int8: the level + 127, 8 bits)
    table      the shared values: k-means centroids, or int8's per-row scales (float32)
then every other tensor of the state_dict (biases, norms, embeddings) as it is, once per storage
(a tied weight is stored once and named twice). Entropy coding: the packed form is coded by
zstd and by lzma, and a Huffman form codes the positions and codes of each layer with their
own Huffman tables (dahuffman); the smallest of the four (packed raw included) is written, and
results.json records what each gave.

    MAGIC(4) | coder (1 byte) | body
    body, decoded: manifest length (4 bytes) | manifest (JSON) | sections

The manifest names every section's length, the model's fingerprint (names, shapes, dtypes of
its state_dict) and a CRC-32 of the sections, so a truncated or altered file, or one written
from another model, is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from prunebench.compress.quantize import INT8_MAX, Quantized

MAGIC = b"PBZ1"
CODERS = ("raw", "huffman", "zstd", "lzma")
ZSTD_LEVEL = 22
EOF = -1  # the Huffman streams' end symbol (codes and positions are >= 0)
LZMA_PRESET = 9 | lzma.PRESET_EXTREME


class CompressedFileError(ValueError):
    """A file that is not a whole compressed model of the expected kind; one line."""


# ---- bit packing and relative positions ----------------------------------------------------

def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned `values` at `bits` each, most significant bit first, padded to a byte."""
    values = np.asarray(values, dtype=np.uint32)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    return np.packbits(((values[:, None] >> shifts) & 1).astype(np.uint8).ravel()).tobytes()


def unpack_bits(blob: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))[:count * bits]
    if flat.size != count * bits:
        raise CompressedFileError("a section is shorter than its manifest says")
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return flat.reshape(count, bits).astype(np.int64) @ weights


def gaps(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Relative offsets with filler entries: `filler` = 2^index_bits - 1 advances that many
    places without a weight; any smaller g places the next weight g places after the last."""
    filler = (1 << index_bits) - 1
    g = np.diff(positions, prepend=-1) - 1
    fillers = g // filler
    out = np.full(int(fillers.sum() + len(g)), filler, dtype=np.int64)
    out[np.cumsum(fillers + 1) - 1] = g % filler
    return out


def positions_of(entries: np.ndarray, index_bits: int) -> np.ndarray:
    filler = (1 << index_bits) - 1
    cursor = np.cumsum(np.where(entries == filler, filler, entries + 1))
    return cursor[entries != filler] - 1


def best_index_bits(positions: np.ndarray) -> int:
    """The offset width that makes the layer's position section smallest."""
    return min(range(1, 17), key=lambda b: len(gaps(positions, b)) * b)


# ---- sections --------------------------------------------------------------------------------

def fingerprint(state: dict[str, Tensor]) -> str:
    # sorted: the order of a module's parameters is not part of the model (removing a
    # parametrization re-registers `weight` after `bias`)
    layout = sorted((k, list(v.shape), str(v.dtype)) for k, v in state.items())
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def symbols(q: Quantized, index_bits: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(position entries, code symbols, code width) of one layer."""
    codes = q.codes.numpy()
    width = 8 if q.kind == "int8" else int(np.log2(len(q.table)))
    if q.kind == "int8":
        codes = codes + INT8_MAX
    return gaps(q.positions.numpy(), index_bits), codes, width


def dense_entries(state: dict[str, Tensor], quantized: set[str]) -> list[dict]:
    """The state_dict's other tensors, in order; a tensor sharing storage with an earlier one
    (tied weights) refers to it instead of being stored twice."""
    seen, out = {}, []
    for name, t in state.items():
        if name in quantized:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            out.append({"name": name, "same_as": seen[key]})
            continue
        seen[key] = name
        out.append({"name": name, "shape": list(t.shape), "dtype": str(t.dtype).split(".")[1]})
    return out


def encode(state: dict[str, Tensor], layers: list[Quantized], index_bits: int | None,
           extra: dict, coders: tuple[str, ...] = CODERS) -> tuple[bytes, dict]:
    """The smallest file for `layers` (the quantized weights) and the rest of `state` among
    `coders`; and what each stage and coder gave, in bytes."""
    manifest = {"format": 1, "fingerprint": fingerprint(state), **extra,
                "layers": [], "dense": dense_entries(state, {q.name for q in layers})}
    packed, streams = [], []
    pruned_bytes = 0
    for q in layers:
        ib = index_bits or best_index_bits(q.positions.numpy())
        entries, codes, width = symbols(q, ib)
        table = q.table.numpy().astype("<f4").tobytes()
        packed += [pack_bits(entries, ib), pack_bits(codes, width), table]
        manifest["layers"].append({"name": q.name, "kind": q.kind, "shape": list(q.shape),
                                   "index_bits": ib, "bits": width, "entries": len(entries),
                                   "nonzero": len(codes), "table": len(q.table)})
        streams.append((entries, codes))
        pruned_bytes += len(packed[-3]) + 4 * len(codes)  # positions + fp32 values
    rest = [tensor_bytes(state[e["name"]]) for e in manifest["dense"] if "same_as" not in e]
    pruned_bytes += sum(map(len, rest))
    raw = container(manifest, packed + rest)
    candidates = {"raw": raw, "zstd": zstd_compress(raw), "lzma": lzma.compress(
        raw, preset=LZMA_PRESET)}
    candidates["huffman"] = huffman_container(manifest, streams, packed, rest)
    coder = min(coders, key=lambda c: len(candidates[c]))
    blob = MAGIC + bytes([CODERS.index(coder)]) + candidates[coder]
    sizes = {"pruned_bytes": pruned_bytes, "quantized_bytes": len(raw) + len(MAGIC) + 1,
             "coders": {c: len(b) + len(MAGIC) + 1 for c, b in candidates.items()},
             "coder": coder}
    return blob, sizes


def huffman_container(manifest: dict, streams: list, packed: list[bytes],
                      rest: list[bytes]) -> bytes:
    """Positions and codes Huffman-coded per layer, each stream after its code lengths (one
    byte per symbol: a canonical code is rebuilt from them alone); the shared values and the
    other tensors as they are."""
    sections = []
    for i, (entries, codes) in enumerate(streams):
        for data in (entries, codes):
            lengths = huffman_lengths(data)
            sections += [lengths.tobytes(), canonical_codec(lengths).encode(data.tolist())]
        sections.append(packed[3 * i + 2])  # the table
    return container(manifest, sections + rest)


def huffman_lengths(data: np.ndarray) -> np.ndarray:
    """Huffman code length of every symbol 0..max (0: absent), the end symbol first."""
    from dahuffman import HuffmanCodec

    symbols, counts = np.unique(data, return_counts=True)
    table = HuffmanCodec.from_frequencies(dict(zip(symbols.tolist(), counts.tolist(),
                                                   strict=True)), eof=EOF).get_code_table()
    lengths = np.zeros(int(symbols.max()) + 2, dtype=np.uint8)
    for symbol, (bits, _) in table.items():
        lengths[symbol + 1] = bits
    return lengths


def canonical_codec(lengths: np.ndarray):
    """The canonical prefix code of these code lengths (DEFLATE's construction)."""
    from dahuffman.huffmancodec import PrefixCodec

    table, code, previous = {}, 0, 0
    for length, index in sorted((int(n), i) for i, n in enumerate(lengths) if n):
        code <<= length - previous
        table[index - 1] = (length, code)
        code, previous = code + 1, length
    return PrefixCodec(table, check=False, eof=EOF)


def container(manifest: dict, sections: list[bytes]) -> bytes:
    manifest = {**manifest, "sections": [len(s) for s in sections],
                "crc": zlib.crc32(b"".join(sections))}
    head = json.dumps(manifest, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + b"".join(sections)


def tensor_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def zstd_compress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


# ---- reading ---------------------------------------------------------------------------------

def read(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(manifest, state_dict) decoded from a compressed file; CompressedFileError otherwise."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC or len(data) < 5 or data[4] >= len(CODERS):
        raise CompressedFileError("not a prunebench compressed model (no PBZ1 header)")
    coder, body = CODERS[data[4]], data[5:]
    try:
        if coder == "zstd":
            import zstandard

            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        elif coder == "lzma":
            body = lzma.decompress(body)
        (size,) = struct.unpack_from("<I", body)
        manifest = json.loads(body[4:4 + size])
        sections, offset = [], 4 + size
        for length in manifest["sections"]:
            sections.append(body[offset:offset + length])
            offset += length
    except Exception as err:  # whatever the bytes are, one line
        raise CompressedFileError(f"truncated or corrupt ({type(err).__name__})") from None
    if offset != len(body) or zlib.crc32(b"".join(sections)) != manifest["crc"]:
        raise CompressedFileError("truncated or corrupt (its sections do not add up)")
    return manifest, decode_state(manifest, sections, coder == "huffman")


def decode_state(manifest: dict, sections: list[bytes], huffman: bool) -> dict[str, Tensor]:
    state, at = {}, 0
    for layer in manifest["layers"]:
        if huffman:  # lengths, stream; lengths, stream
            entries, codes = (canonical_codec(np.frombuffer(sections[at + k], np.uint8))
                              .decode(sections[at + k + 1]) for k in (0, 2))
            at += 4
        else:
            entries = unpack_bits(sections[at], layer["index_bits"], layer["entries"])
            codes = unpack_bits(sections[at + 1], layer["bits"], layer["nonzero"])
            at += 2
        if len(entries) != layer["entries"] or len(codes) != layer["nonzero"]:
            raise CompressedFileError("truncated or corrupt (a layer's count differs)")
        table = torch.from_numpy(np.frombuffer(sections[at], dtype="<f4").copy())
        at += 1
        codes = torch.from_numpy(np.asarray(codes, dtype=np.int64))
        if layer["kind"] == "int8":
            codes = codes - INT8_MAX
        q = Quantized(layer["name"], layer["kind"], tuple(layer["shape"]),
                      torch.from_numpy(positions_of(np.asarray(entries), layer["index_bits"])),
                      codes, table)
        state[q.name] = q.decode()
    for entry in manifest["dense"]:
        if "same_as" in entry:
            continue
        dtype = getattr(torch, entry["dtype"])
        flat = torch.frombuffer(bytearray(sections[at]), dtype=torch.uint8)
        state[entry["name"]] = flat.view(dtype).reshape(entry["shape"]).clone()
        at += 1
    for entry in manifest["dense"]:
        if "same_as" in entry:
            state[entry["name"]] = state[entry["same_as"]]
    return state
