"""A PNG writer (zlib only, no imaging dependency) and image grids for `fastgen sample`."""
import struct
import zlib

import torch


def image_grid(images, nrow=None, pad=1, scale=1):
    """images (N, C, H, W) in [0, 1] -> uint8 (C, rows*(H+pad)+pad, cols*(W+pad)+pad), each pixel
    repeated `scale` x `scale` times. C must be 1 or 3."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W); got {tuple(images.shape)}")
    n, c, h, w = images.shape
    images = images.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        h, w = h * scale, w * scale
    nrow = nrow or max(1, int(round(n ** 0.5)))
    rows = max(1, -(-n // nrow))
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
    return (grid * 255).round().to(torch.uint8)


def write_png(path, image):
    """image: uint8 (1 or 3, H, W) -> an 8-bit greyscale or RGB PNG at `path`."""
    c, h, w = image.shape
    raw = image.permute(1, 2, 0).contiguous().numpy().reshape(h, w * c)
    body = b"".join(b"\x00" + row.tobytes() for row in raw)  # filter type 0 on every scanline

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body, 9))
                + chunk(b"IEND", b""))
