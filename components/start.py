"""The start page: what the lesson shows, in what order, how long it takes, and where it ends."""

from __future__ import annotations

import streamlit as st

from components import common, lesson_nav


def render(inputs: common.Inputs) -> None:
    st.header("LossLens: how a language model's loss is computed", anchor=False)
    st.markdown(f"*{lesson_nav.view('start').question}*")
    with common.friendly_errors():
        lesson_nav.book_notice(inputs)
        st.markdown(
            "Section 5.1 of *Build a Large Language Model (From Scratch)* scores an untrained GPT-2 "
            "on two short texts and gets one number, the **loss**. This lesson rebuilds that number "
            "from the text, one idea per view, with the real model:"
        )
        steps = "\n".join(
            f"{n}. **{v.title}** (about {v.minutes} min): {v.question}"
            for n, v in enumerate(lesson_nav.LESSON[1:], 1)
        )
        st.markdown(steps)
        st.markdown(
            f"About **{lesson_nav.lesson_minutes()} minutes** in all. Each view ends with a "
            "**Next** link; the sidebar holds the texts, the model and the temperature, and "
            "*Beyond the book* has six more views for later."
        )
        s = common.summary(inputs)
        st.markdown("Where the lesson ends up, for the texts in the sidebar:")
        common.metrics(s)
        if st.button("Begin the lesson: Tokens →", type="primary", key="begin"):
            st.switch_page(lesson_nav.LESSON[1].file)
    lesson_nav.footer("start")


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(common.current_inputs())
