"""What jlservice knows and does about JupyterLab's kernels across its restarts.

`verify` finds the kernels a dead JupyterLab left running that are really this service's;
`handover` tells the next JupyterLab which to adopt; `keeper` keeps them for it and ends
those it does not adopt in time; `output` is where every kernel's stdout and stderr go.
"""
