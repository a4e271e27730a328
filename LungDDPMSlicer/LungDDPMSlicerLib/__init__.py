"""Qt-free helpers of the LungDDPMSlicer module, usable inside Slicer and headless (slicer-core wheel).

- geometry: Slicer's IJK-to-RAS matrix <-> LPS origin/spacing/direction of files and the engine
- mrml: export of a CT and segments to engine-ready NRRD files, import of results as nodes, provenance
- process: a background process with non-blocking line reading and whole-tree cancel
- engine: where the bundled engine is, its command lines, its progress and error lines
- jobs: the pollable multi-variant synthesis job and the lung-mask / add-nodule helpers
- models: Resources/models.json, the model cache folder, downloads checked by SHA-256
- estimates: time and memory to expect for a model and device, with warnings
"""

MODULES = ("geometry", "mrml", "process", "engine", "models", "estimates", "jobs")  # reload order (dependencies first)
