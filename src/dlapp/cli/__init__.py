"""The ``dlapp`` command line: ``main`` builds the command from one module per command group
(``apps``, ``cluster``, ``admin``, ``containers``, ``usage``, ``sim``), which share ``common``."""
