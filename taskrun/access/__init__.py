"""Who may do what, and the secrets they may use.

``auth`` (users, roles, API tokens, signed links), ``sessions`` (lasting sign-in),
``oidc`` (single sign-on), ``vault`` (secrets encrypted at rest, given to the runs
that list them), ``masking`` (secrets kept out of what runs write) and ``audit``
(who did what). Imports ``history``, ``store`` and the foundations.
"""
