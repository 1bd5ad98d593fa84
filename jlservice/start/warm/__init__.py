"""Warm restarts: a process that has already imported JupyterLab forks each new server.

parent.py runs in that process (JupyterLab's own interpreter, as its user); recipe.py says
whether and how a command can run there; keeper.py is the supervisor's side.
"""
