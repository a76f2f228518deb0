"""A Power BI Project (PBIP) for the data directory: ``cryptostream powerbi``.

:mod:`.queries` holds the Power Query (M) of every query, :mod:`.model` the
tables, measures and TMDL, :mod:`.report` the page and visuals (PBIR JSON),
:mod:`.project` writes the folder, and :mod:`.kit` the step-by-step kit in
``powerbi/`` from the same sources.
"""

from cryptostream.powerbi.project import Options, ProjectError, host_path, write_project

__all__ = ["Options", "ProjectError", "host_path", "write_project"]
