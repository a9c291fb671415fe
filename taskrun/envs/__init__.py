"""Task environments: a task's declared ``dependencies`` (its PEP 723 block) resolved
into a lock stored with its version (``locks``), and installed once per distinct lock
into an environment named by its hash, shared and never changed (``builds``).

A task without dependencies runs on the server's interpreter, as before. uv does
the resolving and installing (``uvtool``); what it reads of the server's own
settings (``UV_*``, ``uv.toml``) is what points it at a site's index or wheelhouse.
"""
