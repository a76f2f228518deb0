"""The built-in live dashboard: price history in memory, JSON API, live stream, page.

``hub`` holds the state (fed by the CSV sink), ``store`` the compact series,
``api`` the routes, ``live`` the fan-out to open pages. Who may see them
(and ``/metrics``) is :mod:`cryptostream.access`, beside the web server.
"""

from cryptostream.dashboard.hub import Dashboard

__all__ = ["Dashboard"]
