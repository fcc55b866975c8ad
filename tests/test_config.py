"""The production configuration in .streamlit/config.toml: what Community Cloud and
`streamlit run app.py` use. Streamlit itself must read it so (a misspelt key is ignored)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".streamlit" / "config.toml"

# bench/load_protocol.py measures why: each costs CPU on every visit.
PRODUCTION = {
    "server.fileWatcherType": "none",
    "server.runOnSave": False,
    "runner.postScriptGC": False,
    "runner.magicEnabled": False,
    "browser.gatherUsageStats": False,
    "client.showErrorDetails": "none",
}

_EFFECTIVE = """
import json, sys
from streamlit import config
config.get_config_options(force_reparse=True)
print(json.dumps({k: config.get_option(k) for k in sys.argv[1:]}))
"""


def test_config_file_sets_production_options():
    toml = tomllib.loads(CONFIG.read_text())
    for key, value in PRODUCTION.items():
        section, option = key.split(".")
        assert toml[section][option] == value, key


def test_every_setting_says_why():
    """Each option line follows a comment or another option of the same commented block."""
    lines = CONFIG.read_text().splitlines()
    for n, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            block = lines[:n]
            while block and "=" in block[-1] and not block[-1].lstrip().startswith("#"):
                block.pop()
            assert block and block[-1].lstrip().startswith("#"), f"no reason given for {line!r}"


def test_streamlit_reads_the_same_values_from_the_repository_root():
    """A fresh Python, as `streamlit run app.py` starts it from the repository root."""
    out = subprocess.run(
        [sys.executable, "-c", _EFFECTIVE, *PRODUCTION],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == PRODUCTION
