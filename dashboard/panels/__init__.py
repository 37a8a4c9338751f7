"""One module per dashboard view; each exposes ``render(state, view) -> RenderableType``."""
