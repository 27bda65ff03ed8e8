"""``flashvsr-miner doctor``: every check an operator needs before going live, one line each.

    flashvsr-miner doctor --config ~/miner.toml              # exit status 1 when any check fails
    flashvsr-miner doctor --weights random-small --allow-cpu  # CPU tests and demos

Each check returns a :class:`~miner.doctor.result.CheckResult` (OK, FAIL with the exact fix, or SKIP
where it does not apply) within its time bound (:mod:`miner.doctor.runner`). :mod:`miner.doctor.checks`
lists them; :mod:`miner.doctor.start` runs the subset ``flashvsr-miner`` refuses to start without
(wallet, port, open-file limit, storage credentials), so a bad start ends in one line instead of a
traceback, without importing torch. One module per group: ``system`` (GPU, versions, attention),
``model`` (weights, warm-up, encoder), ``wallet``, ``network`` (port, health), ``nofile`` (open-file
limit), ``storage``, ``chain``.
"""
