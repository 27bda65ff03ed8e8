"""A 5x7 bitmap font, enough to stamp captions and frame counters into procedural clips."""

from __future__ import annotations

import numpy as np

# Seven rows per glyph, two hex digits each; bit 4 is the leftmost pixel.
_GLYPHS = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F", "3": "1F02040201110E",
    "4": "02060A121F0202", "5": "1F101E0101110E", "6": "0608101E11110E", "7": "1F010204080808",
    "8": "0E11110E11110E", "9": "0E11110F01020C", "A": "0E11111F111111", "B": "1E11111E11111E",
    "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F",
    "F": "1F10101E101010", "G": "0E11101711110F", "H": "1111111F111111",
    "I": "0E04040404040E", "J": "0702020202120C", "K": "11121418141211", "L": "1010101010101F",
    "M": "111B1515111111", "N": "11111915131111", "O": "0E11111111110E", "P": "1E11111E101010",
    "Q": "0E11111115120D", "R": "1E11111E141211", "S": "0F10100E01011E", "T": "1F040404040404",
    "U": "1111111111110E", "V": "11111111110A04", "W": "1111111515150A",
    "X": "11110A040A1111", "Y": "1111110A040404", "Z": "1F01020408101F", " ": "00000000000000",
    ":": "000C0C000C0C00", ".": "00000000000C0C", "-": "0000001F000000",
}
GLYPH_W, GLYPH_H = 5, 7


def _glyph(char: str) -> np.ndarray:
    code = _GLYPHS.get(char.upper(), _GLYPHS[" "])
    rows = [int(code[i:i + 2], 16) for i in range(0, 14, 2)]
    return np.array([[(row >> (GLYPH_W - 1 - col)) & 1 for col in range(GLYPH_W)] for row in rows], dtype=bool)


def text_mask(text: str, scale: int) -> np.ndarray:
    """Boolean mask ``(7*scale, 6*len(text)*scale)`` of ``text`` (one blank column between glyphs)."""
    cells = [np.pad(_glyph(c), ((0, 0), (0, 1))) for c in text] or [np.zeros((GLYPH_H, GLYPH_W + 1), bool)]
    mask = np.concatenate(cells, axis=1)
    return np.kron(mask, np.ones((scale, scale), dtype=bool)).astype(bool)


def stamp(image: np.ndarray, mask: np.ndarray, x: int, y: int, colour: tuple[int, int, int]) -> None:
    """Paint ``mask`` into the RGB ``image`` at ``(x, y)``, clipped to the image."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mask.shape[1], w), min(y + mask.shape[0], h)
    if x0 >= x1 or y0 >= y1:
        return
    sub = mask[y0 - y:y1 - y, x0 - x:x1 - x]
    image[y0:y1, x0:x1][sub] = colour
