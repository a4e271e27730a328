"""Qt-free helpers of the LungDDPMSlicer module, usable inside Slicer and headless (slicer-core wheel).

- geometry: Slicer's IJK-to-RAS matrix <-> LPS origin/spacing/direction of files and the engine
- mrml: export of a CT and segments to engine-ready NRRD files, import of results as nodes, provenance
- process: a background process with non-blocking line reading and whole-tree cancel
- engine: where the bundled engine is, its command lines, its progress and error lines
- jobs: the pollable multi-variant synthesis job and the lung-mask / add-nodule helpers
- remote: a stdlib (urllib) client of `lungddpm serve`
- remote_jobs: the synthesis job run on such a server, imported as a local run's
- models: Resources/models.json, the model cache folder, downloads checked by SHA-256
- estimates: time and memory to expect for a model, sampler and device, with warnings
- panel: the sampling widgets' rules (enabled states, offered precisions) and the options sent to the engine
"""

MODULES = ("geometry", "mrml", "process", "engine", "models", "estimates", "panel", "jobs", "remote", "remote_jobs")  # reload order (dependencies first)
