"""Type stub of the compiled _charflags.pyx."""

import numpy as np

KNOWN_BIT: int
WORD_BIT: int
LETTER_BIT: int
UNIT_BIT: int
PUNCT_BIT: int
SPACE_BIT: int
TABLE_SIZE: int
FOLD_SHIFT: int

def unlearned(text: str, flags: np.ndarray) -> list[int]: ...
