"""The Prometheus exporter: supervisor figures, GPUs through NVML, GPU memory per notebook.

Data flows one way. The supervisor loop records into a SupervisorView; a sampler thread reads
NVML and JupyterLab's REST API every `interval` seconds into an immutable Snapshot; a scrape
builds fresh samples from both and never waits on NVML or JupyterLab.
"""
