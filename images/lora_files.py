"""A tenant's uploaded LoRA file (issue 23): checked without torch, stored like images,
fetched by the worker that needs it.

Checking. A `.safetensors` file is 8 bytes (little-endian u64: N), N bytes of JSON
(`{tensor name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`)
and the tensors' bytes, which the entries must cover exactly, in order, without holes or
overlaps (the format's own rules: huggingface/safetensors, "Format"). `lora_header_check`
reads only the header and the file's size: the web tier never loads torch (house style
rule 4) and never reads a tensor. A LoRA's keys name low-rank pairs (peft's `lora_A` /
`lora_B`, kohya's `lora_down` / `lora_up` with `alpha`, diffusers' older `lora.down` /
`lora_linear_layer.down`) and the few extras diffusers' `load_lora_weights` reads beside
them (`.alpha`, DoRA's `dora_scale` / `lora_magnitude_vector`, `.diff` / `.diff_b`
weight deltas); a file with any other key (a full checkpoint, an embedding) is refused.

Storing. Uploads go through Django's storage API like images (images/files.py): local
files under MEDIA_ROOT in the embedded mode, the object store when one is configured,
under `loras/<tenant id>/<random>.safetensors`.

Fetching. The worker turns a storage name into a local file: the storage's own path when
it has one (local files), else a copy under LORA_DIR/store-cache/ downloaded once (the
storage names are never reused, so a cached copy is never stale).
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.core.files.storage import default_storage

from core.errors import InvalidRequest

# Bytes per element of each safetensors dtype (safetensors' Dtype enum).
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
# The pair halves (one of each kind must be present) and the extras allowed beside them.
_DOWN = re.compile(r"(?:^|[._])(?:lora_A|lora_down|lora\.down|lora_linear_layer\.down)(?:[._]|$)")
_UP = re.compile(r"(?:^|[._])(?:lora_B|lora_up|lora\.up|lora_linear_layer\.up)(?:[._]|$)")
_EXTRA = re.compile(r"(?:\.alpha|\.dora_scale|lora_magnitude_vector(?:\.[\w.]+)?|\.diff|\.diff_b)$")


class LoraFileError(InvalidRequest):
    """An upload that is not a LoRA adapter in the safetensors format (400 naming `file`)."""

    code = "invalid_lora"

    def __init__(self, message: str) -> None:
        super().__init__(f"Invalid file 'file': {message}", param="file", code=self.code)


class LoraFetchError(RuntimeError):
    """The worker could not bring a stored adapter to a local file (deleted, store away)."""


def lora_header_check(handle: BinaryIO, *, size: int) -> dict[str, Any]:
    """Check that `handle` (an open file of `size` bytes, at offset 0) is a safetensors
    file of LoRA weights (module docstring); reads only its header. Returns
    {"tensors": count, "keys_format": "peft" | "kohya" | "diffusers", "rank": the largest
    low-rank dimension seen, "metadata": the header's __metadata__ (str -> str)}. Raises
    LoraFileError (400) with what is wrong."""
    if size < 8:
        raise LoraFileError("the file is too short to be a .safetensors file.")
    (length,) = struct.unpack("<Q", handle.read(8))
    if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
        raise LoraFileError("not a .safetensors file (its header length is out of range).")
    raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LoraFileError("not a .safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise LoraFileError("not a .safetensors file (its header is not a JSON object).")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoraFileError("not a .safetensors file (__metadata__ must map names to strings).")
    if not header:
        raise LoraFileError("the file holds no tensors.")
    spans = []
    for name, entry in header.items():
        spans.append((*_entry_span(name, entry), name))
    data_bytes = size - 8 - length
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise LoraFileError(f"not a valid .safetensors file (tensor '{name[:80]}' is not where it should be).")
        position = end
    if position != data_bytes:
        raise LoraFileError(
            f"not a valid .safetensors file (its tensors take {position} bytes, the file has {data_bytes})."
        )
    names = list(header)
    strays = [n for n in names if not (_DOWN.search(n) or _UP.search(n) or _EXTRA.search(n))]
    if strays:
        shown = ", ".join(f"'{n[:80]}'" for n in strays[:3])
        raise LoraFileError(
            f"not a LoRA adapter: {len(strays)} of its {len(names)} tensors are not low-rank pairs ({shown}...)."
        )
    downs = [n for n in names if _DOWN.search(n)]
    if not downs or not any(_UP.search(n) for n in names):
        raise LoraFileError("not a LoRA adapter: it has no low-rank (down/up or A/B) pairs.")
    ranks = [min(header[n]["shape"]) for n in downs if header[n]["shape"]]
    if any("lora_A" in n for n in downs):
        keys_format = "peft"
    elif any(n.startswith(("lora_unet_", "lora_te")) for n in names):
        keys_format = "kohya"
    else:
        keys_format = "diffusers"
    return {"tensors": len(names), "keys_format": keys_format, "rank": max(ranks, default=0), "metadata": metadata}


def _entry_span(name: str, entry: Any) -> tuple[int, int]:
    """A tensor entry's [begin, end) in the data section, checked against its dtype and shape."""
    if not isinstance(entry, dict):
        raise LoraFileError(f"not a valid .safetensors file (entry '{name[:80]}' is not an object).")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise LoraFileError(f"tensor '{name[:80]}' has an unknown dtype.")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise LoraFileError(f"tensor '{name[:80]}' has an invalid shape.")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise LoraFileError(f"tensor '{name[:80]}' has invalid data offsets.")
    count = 1
    for dim in shape:
        count *= dim
    if offsets[1] - offsets[0] != count * DTYPE_BYTES[dtype]:
        raise LoraFileError(f"tensor '{name[:80]}': its bytes do not match its shape and dtype.")
    return offsets[0], offsets[1]


def lora_file_save(*, tenant_id: int, upload: BinaryIO) -> str:
    """Store an uploaded adapter (rewound first); returns its storage name
    (`loras/<tenant id>/<random hex>.safetensors`). Storage errors propagate."""
    from django.core.files import File

    upload.seek(0)
    return default_storage.save(f"loras/{tenant_id}/{uuid.uuid4().hex}.safetensors", File(upload))


def lora_file_delete(name: str) -> None:
    """Delete a stored adapter; a missing one is fine; never raises (images.files' rule)."""
    from images.files import image_delete_files

    image_delete_files([name])


def lora_local_path(name: str) -> str:
    """A local file holding the stored adapter `name` (module docstring: the storage's
    own path, else a copy under LORA_DIR/store-cache/ made once, written to a temporary
    name and renamed, so a half-written copy is never read). Raises LoraFetchError."""
    try:
        local = default_storage.path(name)
    except NotImplementedError:  # an object store: no local path
        local = None
    if local is not None:
        if not os.path.isfile(local):
            raise LoraFetchError(f"the stored adapter {name} is gone")
        return local
    cached = Path(settings.LORA_DIR) / "store-cache" / name
    if cached.is_file():
        return str(cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=cached.parent, suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as out, default_storage.open(name, "rb") as stored:
            for chunk in iter(lambda: stored.read(1024 * 1024), b""):
                out.write(chunk)
        os.replace(partial, cached)
    except Exception as exc:
        Path(partial).unlink(missing_ok=True)
        raise LoraFetchError(f"could not fetch the stored adapter {name}: {exc.__class__.__name__}") from exc
    return str(cached)
