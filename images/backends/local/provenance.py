"""Provenance on every delivered image (issue 25): an invisible watermark and a C2PA manifest.

Watermark. invisible-watermark's `dwtDct` scheme (the method SDXL's pipelines use):
the payload (the configuration's `watermark_text`, OUTPUT_WATERMARK_TEXT, as bytes) is
repeated over the 4x4 blocks of the Haar approximation of the image's U (chroma)
channel, one bit per block in the place of its largest coefficient within a quantiser
bin (scale 36), and read back by a majority over the repeats. The library's own encoder
is a Python loop over the blocks (about 0.7 s for a 1024x1024 image on one core) and its
result often does not read back (its uint8 write-back truncates, and in flat blocks the
coefficient it moved stops being the largest: 0 of 10 smooth 256 px images read back in
our trials). So `watermark_embed` applies the same quantiser vectorised, then moves the
blocks the decoder would misread (keeping the moved coefficient the largest of its
block) until the decoder's rule reads the payload. The result is read by the library's
stock decoder, with default settings (what tests/images/test_output_safety.py does):

    WatermarkDecoder("bytes", 8 * len(text)).decode(cv2.imread(path), "dwtDct")

Images under 256x256 pixels (the library's minimum) are left unmarked. The mark
survives PNG and lossless WebP; JPEG at high quality usually, not always.

C2PA. When the configuration names a certificate chain and its key (OUTPUT_C2PA_CERT,
OUTPUT_C2PA_KEY: PEM files, the signer's certificate first), `c2pa_sign` embeds a signed
manifest (c2pa-python) with one `c2pa.actions.v2` assertion: `c2pa.created`, the IPTC
digital source type `trainedAlgorithmicMedia`, the model as `softwareAgent`, and the
time. The algorithm follows the key: ES256/384/512 for P-256/384/521, Ed25519, PS256
for RSA. No thumbnail is embedded (it would double a PNG's size). The signer is built
once per certificate and key files (their modification times) and reused.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from datetime import datetime
from typing import Any

import c2pa
import cv2
import numpy as np
from imwatermark import WatermarkDecoder

from images.backends.base import PipelineError, error_summary
from images.backends.local import config

logger = logging.getLogger(__name__)

MIN_PIXELS = 256 * 256  # invisible-watermark refuses smaller images
_SCALE = 36  # the dwtDct quantiser step the library's decoder assumes (EmbedMaxDct's default)
_BLOCK = 4
_CORRECTION_ROUNDS = 6
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATOR = "image-platform"


def watermark_read(image: Any, length: int) -> bytes:
    """The `length`-byte dwtDct payload of a PIL image, as the stock decoder reads it."""
    bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    return WatermarkDecoder("bytes", 8 * length).decode(bgr, "dwtDct")


def watermark_embed(image: Any, text: str | None = None) -> Any:
    """The image (PIL, any mode) with the configured payload (or `text`) embedded, as a
    new RGB image (RGBA keeps its alpha); unchanged when it is smaller than 256x256 or
    the watermark is off. Deterministic: the same image and text give the same pixels."""
    settings = config.current()
    if text is None:
        if not settings.watermark:
            return image
        text = settings.watermark_text
    if image.width * image.height < MIN_PIXELS:
        return image
    from PIL import Image

    payload = text.encode("ascii")
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    marked = _embedded(bgr, payload)
    result = Image.fromarray(cv2.cvtColor(marked, cv2.COLOR_BGR2RGB))
    if alpha is not None:
        result.putalpha(alpha)
    return result


def _embedded(bgr: np.ndarray, payload: bytes) -> np.ndarray:
    """dwtDct embedding, vectorised: round 0 is the library's encoder
    (EmbedMaxDct.encode_frame: each block's largest non-DC coefficient moved to the
    middle of the quantiser bin of its bit), then the blocks the stock decoder would
    misread are moved again until it reads `payload` (or the rounds run out; one round
    is usually enough). The check is the decoder's own rule, vectorised
    (EmbedMaxDct.decode: per block, that coefficient's place in its bin; per bit, the
    mean over its blocks, * 255 > 127)."""
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8)).astype(np.int64)
    rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
    for round_number in range(_CORRECTION_ROUNDS + 1):
        yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
        # The approximation alone (the check needs nothing else); the details only when
        # the image is written back below.
        approx, products = _haar_approx(yuv[:rows, :cols, 1])
        height, width = approx.shape[0] // _BLOCK, approx.shape[1] // _BLOCK
        # Blocks in the decoder's order (row by row), each flattened to 16 coefficients.
        view = approx[: height * _BLOCK, : width * _BLOCK].reshape(height, _BLOCK, width, _BLOCK)
        blocks = view.transpose(0, 2, 1, 3).reshape(-1, _BLOCK * _BLOCK).copy()
        number = np.arange(len(blocks))
        wanted = bits[number % len(bits)]
        magnitude = np.abs(blocks)
        position = np.argmax(magnitude[:, 1:], axis=1) + 1  # (the decoder's choice of coefficient)
        value = magnitude[number, position]
        read = ((value % _SCALE) > 0.5 * _SCALE).astype(np.int64)
        means = np.bincount(number % len(bits), weights=read, minlength=len(bits)) / np.bincount(
            number % len(bits), minlength=len(bits)
        )
        if round_number and np.array_equal((means * 255 > 127).astype(np.int64), bits):
            return bgr
        if round_number == _CORRECTION_ROUNDS:
            break
        wrong = read != wanted if round_number else np.ones(len(blocks), dtype=bool)
        others = magnitude[:, 1:].copy()
        others[number, position - 1] = 0.0
        target = (value // _SCALE + 0.25 + 0.5 * wanted) * _SCALE
        # Stay the block's largest coefficient, or the decoder reads another one.
        target += _SCALE * np.ceil(np.maximum(0.0, others.max(axis=1) + 1 - target) / _SCALE)
        sign = np.where(blocks[number, position] < 0, -1.0, 1.0)
        blocks[number[wrong], position[wrong]] = (sign * target)[wrong]
        view[...] = blocks.reshape(height, width, _BLOCK, _BLOCK).transpose(0, 2, 1, 3)
        # Only U's coefficients changed: Y, V (and U past the last whole 4 px) are written
        # back as they were (integers, which the rounding and clipping kept as they are).
        marked = yuv.copy()
        u = _haar_inverse(approx, _haar_details(products))
        np.clip(np.rint(u, out=u), 0, 255, out=u)
        marked[:rows, :cols, 1] = u.astype(np.uint8)
        bgr = cv2.cvtColor(marked, cv2.COLOR_YUV2BGR)
    logger.warning("the watermark could not be made to read back after %d rounds", _CORRECTION_ROUNDS)
    return bgr


# The single-level 2-D Haar transform of pywt.dwt2(x, "haar") / pywt.idwt2(..., "haar")
# for arrays of even height and width, with the same floating-point operations in the
# same order (rows first, then columns; each coefficient is one sum of two products by
# 1/sqrt(2)), so the coefficients are the same bit for bit (tests/images/
# test_output_safety.py compares them with pywt's): pywt's generic convolutions took
# about 1 ms of the ~2.3 ms a round cost on a 256x256 image; a round is now ~0.9 ms.
_HAAR = np.float64(0.7071067811865476)  # pywt.Wavelet("haar").dec_lo[0]


def _haar_approx(channel: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """pywt.dwt2(channel, "haar")'s cA (H x W -> H/2 x W/2, float64) of a channel of
    even height and width, and the products `_haar_details` makes the rest from."""
    x = channel.astype(np.float64)
    even, odd = x[0::2] * _HAAR, x[1::2] * _HAAR  # rows first
    low = even + odd
    low_even, low_odd = low[:, 0::2] * _HAAR, low[:, 1::2] * _HAAR
    return low_even + low_odd, (even, odd, low_even, low_odd)


def _haar_details(products: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pywt.dwt2's (cH, cV, cD), from the products `_haar_approx` returned."""
    even, odd, low_even, low_odd = products
    high = even - odd
    high_even, high_odd = high[:, 0::2] * _HAAR, high[:, 1::2] * _HAAR
    return high_even + high_odd, low_even - low_odd, high_even - high_odd


def _haar_inverse(approx: np.ndarray, details: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """pywt.idwt2((approx, details), "haar"): columns first, then rows (pywt's order)."""
    horizontal, vertical, diagonal = details

    def merge(low: np.ndarray, high: np.ndarray, axis: int) -> np.ndarray:
        shape = list(low.shape)
        shape[axis] *= 2
        out = np.empty(shape)
        low, high = low * _HAAR, high * _HAAR
        out[(slice(None),) * axis + (slice(0, None, 2),)] = low + high
        out[(slice(None),) * axis + (slice(1, None, 2),)] = low - high
        return out

    return merge(merge(approx, vertical, 1), merge(horizontal, diagonal, 1), 0)


_signer_lock = threading.Lock()
_signer: dict[str, Any] = {"key": None, "signer": None}


def _algorithm(key_pem: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name not in by_curve:
            raise PipelineError(f"C2PA keys on curve {key.curve.name} are not supported (use P-256, P-384 or P-521)")
        return getattr(c2pa.C2paSigningAlg, by_curve[key.curve.name])
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return c2pa.C2paSigningAlg.ED25519
    if isinstance(key, rsa.RSAPrivateKey):
        return c2pa.C2paSigningAlg.PS256
    raise PipelineError("the C2PA key must be an EC (P-256/384/521), Ed25519 or RSA private key")


def _signer_for(cert_path: str, key_path: str) -> Any:
    """The c2pa Signer of these files, rebuilt when either file changes."""
    try:
        identity = (cert_path, key_path, os.path.getmtime(cert_path), os.path.getmtime(key_path))
        if _signer["key"] == identity:
            return _signer["signer"]
        with open(cert_path, "rb") as handle:
            chain = handle.read()
        with open(key_path, "rb") as handle:
            key_pem = handle.read()
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(_algorithm(key_pem), chain, key_pem, None))
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(f"the C2PA certificate or key could not be used: {error_summary(exc)}") from exc
    _signer.update(key=identity, signer=signer)
    return signer


def c2pa_enabled() -> bool:
    settings = config.current()
    return bool(settings.c2pa_cert and settings.c2pa_key)


def c2pa_sign(data: bytes, *, content_type: str, model: str, generated_at: datetime) -> bytes:
    """`data` (an encoded PNG, JPEG or WebP) with a signed C2PA manifest embedded that
    says it was generated by `model` at `generated_at`; `data` itself when no
    certificate is configured. Raises PipelineError when signing fails."""
    settings = config.current()
    if not (settings.c2pa_cert and settings.c2pa_key):
        return data
    manifest = {
        "claim_generator_info": [{"name": GENERATOR}],
        "title": f"generated.{content_type.split('/')[-1]}",
        "format": content_type,
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": DIGITAL_SOURCE_TYPE,
                            "softwareAgent": {"name": model},
                            "when": generated_at.isoformat(),
                        }
                    ]
                },
            }
        ],
    }
    with _signer_lock:
        signer = _signer_for(settings.c2pa_cert, settings.c2pa_key)
        try:
            context = c2pa.Context(c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))
            builder = c2pa.Builder(manifest, context=context)
            out = io.BytesIO()
            builder.sign(signer, content_type, io.BytesIO(data), out)
        except Exception as exc:
            raise PipelineError(f"C2PA signing failed: {error_summary(exc)}") from exc
    return out.getvalue()
