"""The browser console under ``/console/`` (docs/console.md): server-rendered pages over the
engine's own data, for operators and marketers.

Mounted by the app in processes with the api role (:func:`engine.console.app.add_console`).
The pieces a page uses:

- ``engine/console/routes.py``: the one table of console routes ``(method, path, handler,
  min_role)``; the role is checked (and CSRF on POST) before the handler runs;
- :func:`engine.console.render.render` ``(request, "page.html", **ctx)``: a page that extends
  ``base.html`` (layout, nav, the ``num`` masking filter, ``csrf_field()``);
- :func:`engine.console.auth.require` ``(request, "operator")``: a finer check inside a handler;
  :func:`engine.console.auth.user` ``(request)``: who is asking;
- :func:`engine.console.audit.audit` ``(request, "action", **fields)``: every action, logged;
- :func:`engine.console.web.services` ``(request)``: the engine's services (what /v1 handlers use).
"""
