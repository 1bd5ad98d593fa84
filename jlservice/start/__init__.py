"""How JupyterLab is started: the exact launch, cold (a new process) or warm (forked)."""
