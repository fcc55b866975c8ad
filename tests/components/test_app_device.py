"""The sidebar's Device setting through AppTest: it lists what the server has, travels in the URL,
and the numbers shown come from a model on that device."""

from __future__ import annotations

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from core.runtime.device import available_devices, describe

pytestmark = pytest.mark.usefixtures("app_env")


def app(**query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    for k, v in query.items():
        at.query_params[k] = str(v)
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_device_picker_lists_this_servers_devices_and_keeps_the_choice_in_the_url():
    at = app(device="cpu")
    picker = at.selectbox(key="device")
    assert picker.label == "Device"
    assert picker.options == [describe(d) for d in available_devices()]
    assert picker.value == "cpu"
    assert picker.proto.query_param_key == "device"  # a link carries it (the default is left out)
    assert picker.disabled == (len(available_devices()) == 1)
    assert ("No CUDA or MPS GPU" in picker.help) == (len(available_devices()) == 1)
    assert [m.value for m in at.metric if m.label == "Loss (cross entropy)"] == ["10.7940"]


def test_the_server_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOSSLENS_DEVICE", "cpu")
    assert app().selectbox(key="device").value == "cpu"
    monkeypatch.setenv("LOSSLENS_DEVICE", "tpu")  # a bad value: the picker falls back to auto
    at = app()
    assert at.selectbox(key="device").value == available_devices()[0]
    assert not at.error
