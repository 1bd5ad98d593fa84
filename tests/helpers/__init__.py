"""What the tests (and bench/) share; `helpers` is importable as a top-level package because
pyproject's [tool.pytest.ini_options] pythonpath puts tests/ on sys.path.

- procs: free ports, waiting for a condition, whether a pid runs
- service: a real `jlservice run` under test (Service), JupyterLab's REST API and kernels
  (LabClient), TOML rendering, a fake systemd notification socket
- accounts: throw-away unprivileged users (as root)
- launch: a launch built from a minimal configuration, for the unit tests
- metrics: scraping an exporter with prometheus_client's parser
- nginx, browser: a real nginx and a real headless Chromium, ended by PID
- units: the shipped systemd units rendered, and `systemd-analyze security`'s exposure
"""
