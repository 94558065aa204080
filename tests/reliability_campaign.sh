#!/bin/sh
# Re-runs the hostile campaigns' cases that the tests hold (test_run_guard.py, and
# the test_*_guard.py files named for what they guard; docs/reliability.md lists the kinds of fault).
# Each case failed before its fix. Extra arguments go to pytest (e.g. -x, -k sweep).
cd "$(dirname "$0")/.." || exit 2
exec "${PYTHON:-python}" -m pytest -q tests/test_run_guard.py tests/test_sweep_guard.py tests/test_report_guard.py \
    tests/test_label_import_guard.py tests/test_options_guard.py tests/test_tamper_guard.py "$@"
