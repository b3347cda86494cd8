"""Engines: the executors of one :class:`~gpuzarr.plan.planner.BatchPlan`.

:mod:`gpuzarr.engines.base` holds the contract (the :class:`~gpuzarr.engines.base.Engine`
protocol, :class:`~gpuzarr.engines.base.EngineCapabilities` as data) and the one device
decision, :func:`~gpuzarr.engines.base.resolve_engine`. :mod:`gpuzarr.engines.cpu` uses
NumPy and the shared CPU thread pool; :mod:`gpuzarr.engines.gpu.engine` uses nvCOMP, CuPy
and the kernels in ``kernels/``.
"""
