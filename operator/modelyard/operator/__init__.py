"""The Kopf operator for ``ModelDeployment`` resources (``modelyard operator``).

The handlers (:mod:`modelyard.operator.handlers`) are thin; a ModelDeployment is
reconciled in phases (:mod:`modelyard.operator.reconcile`): resolve the reference in the
registry, plan the children and the status, apply, observe.
"""
