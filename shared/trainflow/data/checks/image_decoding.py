"""The one image loader: decode fully under a pixel budget, apply EXIF orientation, convert any mode to RGB.

Ingest's checks and its snapshot call the same functions, so an image that passed the checks decodes the same
way when it is written. Every refusal is a RecordRejected naming the rule (image_too_many_pixels,
image_undecodable, image_too_small, image_mode, and the mask_* rules).
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from trainflow.data.checks.quarantine import RecordRejected

TRANSPARENT_BACKGROUND = (255, 255, 255)  # transparent pixels show as white, as on a page
# What Pillow's decoders raise on a broken file (struct.error and IndexError come from short or lying headers).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    max_pixels: int  # refuse an image (or mask) with more pixels than this before decoding it
    min_size: int  # refuse an image whose shorter side is below this


@contextlib.contextmanager
def pixel_budget(max_pixels: int) -> Iterator[None]:
    """Pillow's bomb limit set to `max_pixels` (and truncated files refused) for the duration; restored after.

    Pillow only warns between 1x and 2x its limit, so the warning is raised as an error here.
    """
    previous = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open_fully(path: Path, limits: ImageLimits, what: str) -> Image.Image:
    """The decoded image with EXIF orientation applied, in its own mode."""
    with pixel_budget(limits.max_pixels):
        try:
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > limits.max_pixels:
                    raise RecordRejected(f"{what}_too_many_pixels", f"{what} is {width}x{height} = {width * height} pixels, "
                                                                    f"above ingest.max_image_pixels {limits.max_pixels}")
                opened.load()  # decodes every pixel; Image.verify() alone misses truncated files
                return ImageOps.exif_transpose(opened)  # the orientation a viewer shows
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RecordRejected(f"{what}_too_many_pixels", f"{what} is above ingest.max_image_pixels {limits.max_pixels} "
                                                            f"({exc})") from None
        except DECODE_ERRORS as exc:
            raise RecordRejected(f"{what}_undecodable", f"{what} does not decode ({type(exc).__name__}: {exc})") from None


def _gray_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float gray images scaled to 0..255 (Pillow's convert clips them instead)."""
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        # Float images are usually 0..1; anything else is taken as already on the 0..255 scale.
        scaled = values * 255.0 if values.size and values.min() >= 0 and values.max() <= 1 else values
    else:
        values = np.clip(values.astype(np.int64), 0, 65535)
        # I;16 is 16-bit by definition; a 32-bit "I" image is taken as 16-bit when any value exceeds 8 bits.
        scaled = values / 257.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else values
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def image_to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: transparency composited on white, 16-bit/float gray scaled, palettes expanded."""
    if image.mode == "RGB" and not image.has_transparency_data:
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _gray_to_8bit(image).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_size(image: Image.Image, limits: ImageLimits) -> None:
    if min(image.size) < limits.min_size:
        raise RecordRejected("image_too_small", f"image is {image.width}x{image.height}, below ingest.min_image_size "
                                                f"{limits.min_size}")


def decode_image_file(path: Path, limits: ImageLimits) -> Image.Image:
    """The image at `path` as RGB, oriented as a viewer shows it; RecordRejected when it cannot be used."""
    image = _open_fully(path, limits, "image")
    try:
        rgb = image_to_rgb(image)
    except (ValueError, OSError, TypeError) as exc:
        raise RecordRejected("image_mode", f"image mode {image.mode} cannot be converted to RGB ({exc})") from None
    _check_size(rgb, limits)
    return rgb


def image_array_to_rgb(array: np.ndarray, limits: ImageLimits) -> Image.Image:
    """A uint8 (H,W), (H,W,1), (H,W,3) or (H,W,4) array as an RGB image."""
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise RecordRejected("image_mode", f"image array must be uint8, got {getattr(array, 'dtype', type(array).__name__)}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise RecordRejected("image_mode", f"image array has shape {array.shape}; expected (H,W), (H,W,1), (H,W,3) or (H,W,4)")
    image = image_to_rgb(Image.fromarray(np.ascontiguousarray(array)))
    _check_size(image, limits)
    return image


def alpha_channel(image: Image.Image | np.ndarray) -> np.ndarray | None:
    """An image's alpha channel as uint8 (H, W), or None when it has no transparency (text_to_image loss masks)."""
    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image[:, :, 3]) if image.ndim == 3 and image.shape[2] == 4 else None
    if not image.has_transparency_data:
        return None
    return np.asarray(image.convert("RGBA"))[:, :, 3].copy()


def decode_alpha_file(path: Path, limits: ImageLimits) -> np.ndarray | None:
    """The alpha channel of the image at `path` (EXIF orientation applied, as its RGB is), or None."""
    return alpha_channel(_open_fully(path, limits, "image"))


def mask_class_ids(mask: Image.Image | np.ndarray) -> np.ndarray:
    """A mask's class ids as a uint8 (H,W) array; RecordRejected when it is not single-channel ids in 0..255."""
    if isinstance(mask, Image.Image):
        if mask.mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
            raise RecordRejected("mask_mode", f"mask has mode {mask.mode}; a mask holds one class id per pixel "
                                              "(a single-channel PNG, mode L or P)")
        values = np.asarray(mask).astype(np.int64)
    else:
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise RecordRejected("mask_mode", f"mask array must be 2-D integer class ids, got "
                                              f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}")
        values = mask.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise RecordRejected("mask_unknown_class", f"mask holds class id {int(values.max() if values.max() > 255 else values.min())}; "
                                                   "class ids must be 0..255")
    return values.astype(np.uint8)


def decode_mask_file(path: Path, limits: ImageLimits) -> np.ndarray:
    """The mask at `path` as uint8 class ids (H,W), EXIF orientation applied like its image's."""
    return mask_class_ids(_open_fully(path, limits, "mask"))


def check_mask(ids: np.ndarray, image_size: tuple[int, int], num_classes: int | None) -> None:
    """RecordRejected when the mask's size differs from its image's (W,H) or it holds an undeclared class id."""
    height, width = ids.shape
    if (width, height) != tuple(image_size):
        raise RecordRejected("mask_wrong_size", f"mask is {width}x{height} but its image is {image_size[0]}x{image_size[1]}")
    if num_classes is not None and ids.size and int(ids.max()) >= num_classes:
        unknown = sorted(int(v) for v in np.unique(ids) if v >= num_classes)
        raise RecordRejected("mask_unknown_class", f"mask holds class id(s) {unknown[:5]} outside the {num_classes} declared "
                                                   "classes (ingest.class_names)")
