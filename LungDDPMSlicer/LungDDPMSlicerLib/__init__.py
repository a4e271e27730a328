"""Qt-free helpers of the LungDDPMSlicer module, usable inside Slicer and headless (slicer-core wheel).

- compat: the supported Slicer and Python versions, checked at module load
- geometry: Slicer's IJK-to-RAS matrix <-> LPS origin/spacing/direction of files and the engine
- mrml: export of a CT and segments to engine-ready NRRD files, import of results as nodes, provenance
- process: a background process with non-blocking line reading and whole-tree cancel
- engine: where the bundled engine is, its command lines, its progress and error lines
- worker: how a job runs the engine: one process per variant, or the session's long-lived `lungddpm worker`
- compare: the compare view after a synthesis (side by side, linked, fade) and the way back to the user's views
- preview: the click-to-place sphere that previews a nodule at the placed point with the chosen diameter
- sample: the sample data set (the engine's phantom CT with a ready layout)
- jobs: the pollable multi-variant synthesis job and the lung-mask / add-nodule helpers
- checkpoint_info: the nodule attributes a model file takes, read without torch
- nodule_attributes: the engine's attribute schema and prompt parser, segment tags, the sidecar for the engine
- install: the PyTorch install as background processes (light-the-torch, as SlicerPyTorch does)
- remote: a stdlib (urllib) client of `lungddpm serve`
- remote_jobs: the synthesis job run on such a server, imported as a local run's
- models: Resources/models.json, the model cache folder, downloads checked by SHA-256
- estimates: time and memory to expect for a model, sampler and device, with warnings
- panel: the sampling and attribute widgets' rules (enabled states, offered precisions) and the options sent to
  the engine (what Add nodule paints, what Synthesize sends)
"""

MODULES = ("compat", "geometry", "mrml", "process", "engine", "models", "estimates", "panel", "checkpoint_info",
           "nodule_attributes", "install", "worker", "jobs", "remote", "remote_jobs", "compare", "preview", "sample")  # reload order (dependencies first)
