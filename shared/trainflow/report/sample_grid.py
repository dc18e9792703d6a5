"""A self-contained HTML page: captioned sample grid plus the metrics table."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import torch
from PIL import Image

DISPLAY_SIZE = 96


def _png_data_uri(image: torch.Tensor) -> str:
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def sample_grid_html(
    captions: list[str], real: torch.Tensor, generated: dict[str, torch.Tensor],
    values: dict[str, float], skipped: dict[str, str], fid_features: str,
) -> str:
    """One row per caption: the real test image, then each model's sample for that caption."""
    columns = ["caption", "real test image", *generated]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for index, caption in enumerate(captions):
        cells = [f"<td>{html.escape(caption)}</td>", _img_cell(real[index])]
        cells += [_img_cell(images[index]) for images in generated.values()]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    metric_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(values.items()))
    skipped_rows = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in skipped.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>trainflow generation samples</title>
<style>body{{font-family:sans-serif}} td,th{{padding:4px 8px;text-align:left}} img{{image-rendering:pixelated}}</style>
</head><body>
<h1>Generated samples</h1>
<p>FID features: <b>{html.escape(fid_features)}</b>. Same seed per caption for every model.</p>
<table><tr>{head}</tr>{''.join(rows)}</table>
<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>{metric_rows}</table>
{'<h2>Skipped</h2><ul>' + skipped_rows + '</ul>' if skipped else ''}
</body></html>
"""


def _img_cell(image: torch.Tensor) -> str:
    return f'<td><img src="{_png_data_uri(image)}" width="{DISPLAY_SIZE}" height="{DISPLAY_SIZE}"></td>'
