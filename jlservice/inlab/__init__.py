"""Code that runs inside JupyterLab's own process, in JupyterLab's interpreter.

jlservice never imports these modules: it copies their text into JupyterLab's private dir
(`start.private_dir`), where JupyterLab, and only JupyterLab, finds them. So they import
only the standard library and what JupyterLab's environment has, never jlservice. (The
doctor runs `environments.py` too, by path, as a program of the lab user's: `python -I
-S …/inlab/environments.py`.)
"""
