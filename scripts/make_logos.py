"""Draw the kernel's logos: kernelspec/lua/logo-{32x32,64x64}.png and logo-svg.svg.

A navy planet with a bite taken out, and a small moon in orbit (a nod to the
name: "Lua" is Portuguese for moon). Pure Python, anti-aliased by 4x4
supersampling; run it again after changing the shapes.
"""
import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "kernelspec" / "lua"
# (cx, cy, r) in a 64-unit square; colour or None (cut out)
SHAPES = [
    ((28, 36, 24), (0x1F, 0x3B, 0x73)),   # planet
    ((38, 26, 8), None),                  # the bite
    ((54, 10, 7), (0x2E, 0x8B, 0xC0)),    # moon
]


def pixel(x: float, y: float):
    colour = None
    for (cx, cy, r), fill in SHAPES:
        if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
            colour = fill
    return colour


def png(size: int) -> bytes:
    rows = []
    ss = 4
    for j in range(size):
        row = bytearray([0])
        for i in range(size):
            acc = [0, 0, 0, 0]
            for sj in range(ss):
                for si in range(ss):
                    x = (i + (si + 0.5) / ss) * 64 / size
                    y = (j + (sj + 0.5) / ss) * 64 / size
                    c = pixel(x, y)
                    if c:
                        for k in range(3):
                            acc[k] += c[k]
                        acc[3] += 255
            n = ss * ss
            a = acc[3] // n
            cov = max(acc[3] // 255, 1)
            row += bytes([acc[0] // cov, acc[1] // cov, acc[2] // cov, a])
        rows.append(bytes(row))

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def svg() -> str:
    (px, py, pr), planet = SHAPES[0]
    (bx, by, br), _ = SHAPES[1]
    (mx, my, mr), moon = SHAPES[2]
    hexc = lambda c: "#%02x%02x%02x" % c  # noqa: E731
    return f"""<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" width="64" height="64">
  <mask id="bite"><rect width="64" height="64" fill="white"/>\
<circle cx="{bx}" cy="{by}" r="{br}" fill="black"/></mask>
  <circle cx="{px}" cy="{py}" r="{pr}" fill="{hexc(planet)}" mask="url(#bite)"/>
  <circle cx="{mx}" cy="{my}" r="{mr}" fill="{hexc(moon)}"/>
</svg>
"""


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for size in (32, 64):
        (OUT / f"logo-{size}x{size}.png").write_bytes(png(size))
    (OUT / "logo-svg.svg").write_text(svg())
    print("wrote", *sorted(p.name for p in OUT.iterdir()))
