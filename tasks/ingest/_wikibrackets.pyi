from collections.abc import Callable

def split_top(inner: str) -> list[str]: ...
def drop_tables(text: str) -> str: ...

class PairRenderer:
    def __call__(self, text: str) -> str: ...

class TemplateRenderer(PairRenderer):
    def __init__(
        self,
        kept_params: Callable[[str], tuple[int, ...] | None],
        render_kept: Callable[[str, tuple[int, ...]], str],
        check: Callable[[str], None],
    ) -> None: ...

class LinkRenderer(PairRenderer):
    def __init__(
        self,
        drops_prefix: Callable[[str], bool],
        pipe_trick: Callable[[str], str],
        check: Callable[[str], None],
    ) -> None: ...
