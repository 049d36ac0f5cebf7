"""Type stub of the compiled _textstats.pyx."""

import numpy as np

class Words:
    ids: np.ndarray
    lens: np.ndarray
    count: int
    chars: int
    with_letter: int
    def __init__(self, text: str, flags: np.ndarray, joiners: str) -> None: ...
    def folded(self, longest: int, fold: np.ndarray) -> set[str]: ...

class Units:
    ids: np.ndarray
    count: int
    visible: int
    letters: int
    def __init__(self, text: str, flags: np.ndarray) -> None: ...
    def distinct(self) -> str: ...

def space_counts(text: str, limit: int, flags: np.ndarray) -> tuple[int, int]: ...
def folded_contains(text: str, limit: int, needle: str, flags: np.ndarray, fold: np.ndarray) -> bool: ...
def line_stats(
    text: str, flags: np.ndarray, bullets: str, ellipses: tuple[str, ...], closers: str, marks: str
) -> tuple[int, int, int, int, int, int, int]: ...
def paragraph_stats(text: str, flags: np.ndarray) -> tuple[int, int, int, int]: ...
