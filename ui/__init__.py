"""The helpers the pages in `components/` draw with: state and caches, number formats, charts,
text alternatives, the look, the sidebar and the lesson's path. It imports `core` and itself,
never a page."""
