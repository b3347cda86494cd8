"""Planning: regions of a batch to distinct chunks and the pieces cut from them.

Device-free and storage-free: :mod:`gpuzarr.plan.planner` turns a batch of regions into a
:class:`~gpuzarr.plan.planner.BatchPlan` (NumPy tables), and
:mod:`gpuzarr.plan.transform` describes the cast/normalise/layout applied while assembling.
"""
