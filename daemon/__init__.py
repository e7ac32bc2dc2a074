"""fnd's server: the aiohttp front-end, the pool, supervision and the control API.

Nothing in this package imports or runs user code. Installed as ``fnd.daemon``. Map:

- ``http/``: the HTTP front-end (app, event, signatures, assets, timeouts, listeners).
- ``pool/``: workers (pool, queue, worker handles, slots, deaths, frame checks, spawner).
- ``sandbox/``: the host side as root (set-up, read checks, privileges, cgroups, uid claims).
- ``ops/``: control socket, status, metrics, OpenTelemetry export, systemd, PID 1, socket
  claims, watch.
- At the top, what every package here uses: ``server`` (the composition root), ``calls``,
  ``stats``, ``logs``, ``config``, ``config_cli``, ``frame_room``, ``project``,
  ``deps_folder``, ``canary``.
"""
