"""The shared core: what every component of modelyard agrees on.

The operator, the model server and the pipelines each import this package; it imports
none of them (``[tool.importlinter]`` in pyproject.toml checks it). It holds:

- :mod:`modelyard.core.contracts`: the names components rely on (environment variables,
  ports, probe paths, labels, annotations, registry tags, artifact paths, the
  prediction-log layout, exit codes, the drift window syntax);
- :mod:`modelyard.core.registry`: the one MLflow Model Registry client (resolve a
  reference, read lineage, read and write tags), with credentials per client and no
  process-global state;
- :mod:`modelyard.core.pods`: the pieces every pod is made of (the Pod Security
  "restricted" contexts, labels, the writable ``/tmp``).
"""
