"""Applications built on the public API (:mod:`punchthrough.endpoint`), not part of it.

- :mod:`punchthrough.apps.echo`: the echo call behind ``punchthrough listen --echo`` and
  ``punchthrough connect``, which the simulator scenarios run unchanged on virtual time.
"""
