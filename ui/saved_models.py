"""The visitor's saved models on the Training page: their disk use against the server's quota,
a Delete button for each, and why saving is off where the cache folder cannot be written."""

from __future__ import annotations

import streamlit as st

from core.models import checkpoints, model_files, storage
from core.models.registry import trained_key
from ui import cache, formats


def _mb(n: int) -> str:
    return f"{n / storage.MB:,.0f} MB" if n >= storage.MB else f"{n / storage.MB:.1f} MB"


def storage_problem(owner: str | None) -> str | None:
    """Why this server cannot save models (an unwritable or missing cache folder), or None."""
    return storage.save_problem(owner=owner)


def warn(problem: str) -> None:
    """Why saving is off (from storage_problem), and that the rest of the app is not."""
    st.warning(
        formats.md(problem) + " The lessons work as usual; only training is off.",
        icon=":material/folder_off:",
    )


def render(owner: str | None) -> None:
    """The owner's saved models with a Delete button each, and the server's quota."""
    units = [u for u in model_files.saved_units() if u.owner == owner]
    if not units:
        return
    max_bytes, max_count = storage.quota()
    everyone = sum(u.bytes for u in model_files.saved_units())
    mine = sum(u.bytes for u in units)
    with st.expander(f"Your saved models: {len(units)}, {_mb(mine)}"):
        st.caption(
            f"This server keeps at most {_mb(max_bytes)} and {max_count} saved models in all "
            f"({_mb(everyone)} now); when a new save needs room, the oldest unpinned models go first. "
            "A finished run keeps only its weights; a stopped one also keeps what Resume needs."
        )
        for unit in sorted(units, key=lambda u: -u.mtime):
            c1, c2 = st.columns([4, 1])
            resumable = checkpoints.is_resumable(unit.name, owner=owner)
            c1.markdown(
                f"**{formats.md(unit.name)}** · {_mb(unit.bytes)}"
                + (" · can resume" if resumable else "")
                + (" · pinned" if unit.pinned else "")
            )
            if c2.button("Delete", key=f"delete_model_{unit.name}", icon=":material/delete:"):
                if model_files.delete_model(unit.name, owner=owner):
                    cache.forget_model(trained_key(unit.name, owner))
                st.rerun()
