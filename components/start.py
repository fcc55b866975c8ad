"""The start page: what the lesson shows, in what order, how long it takes, and where it ends."""

from __future__ import annotations

import streamlit as st

from ui import cache, errors, lesson_nav, state, widgets


def render(inputs: state.Inputs) -> None:
    lesson_nav.scroll_to_top("start")
    st.header("LossLens: how a language model's loss is computed", anchor=False)
    st.markdown(f"*{lesson_nav.view('start').question}*")
    with errors.friendly_errors():
        lesson_nav.book_notice(inputs)
        st.markdown(
            "Section 5.1 of *Build a Large Language Model (From Scratch)* scores an untrained GPT-2 on "
            "two short texts and gets one number, the **loss**. You rebuild it with the real model, "
            f"in {len(lesson_nav.LESSON) - 1} views and about **{lesson_nav.lesson_minutes()} minutes**:"
        )
        views = enumerate(lesson_nav.LESSON[1:], 1)
        st.markdown("\n".join(f"{n}. **{v.title}** · {v.minutes} min · {v.gist}" for n, v in views))
        if st.button(f"Begin: {lesson_nav.LESSON[1].title} →", type="primary", key="begin"):
            st.switch_page(lesson_nav.LESSON[1].file)
        st.caption(
            "Each view ends with a Next link (Tab, then Enter). The sidebar holds the texts, the model and "
            "the temperature; *Beyond the book* has six more views for later."
        )
        s = cache.summary(inputs)
        st.markdown("Where the lesson ends up, for the texts in the sidebar:")
        widgets.metrics(s)
    lesson_nav.footer("start")


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
