"""Settings of the scheduling tests (their throw-away Ray head, ``ray_head``, is in tests/conftest.py)."""

from __future__ import annotations

import os
import tempfile

# Airflow reads (and writes) its home at import: keep it in a throw-away dir, never ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="openwit-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
