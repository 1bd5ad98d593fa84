"""jlservice's benchmarks, run from the repository root as `python -m bench.<name>`.

They reuse the tests' helpers: tests/ and tests/systemd go on sys.path here, once, as
pyproject's [tool.pytest.ini_options] pythonpath does for the tests (`helpers`, `nvml`,
`sandbox`).
"""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
for _path in (_TESTS / "systemd", _TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
